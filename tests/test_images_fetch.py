"""Fetching and decoding hostile images (SPEC §6) against real loopback servers, no mocks."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.failures import Failure
from core.schemas import ErrorCode
from core.settings import Settings
from imaging import DecodedImage, ImageFetcher, decode_image, load_image
from tests.conftest import png_bytes
from tests.support.servers import ImageHost

# --- helpers -------------------------------------------------------------------------------------


def unique(name: str) -> str:
    """A path no other test uses on the session-wide image host."""
    return f"/{uuid.uuid4().hex[:8]}/{name}"


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """A smooth RGB image (JPEG-friendly), distinct along each axis."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    pixels = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                       np.full((height, width), 128.0)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def jpeg_bytes(width: int, height: int, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return encode(gradient(width, height), "JPEG", quality=85, exif=exif)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A 1-bit grayscale PNG, all black: huge sizes compress ~1000:1, a decompression bomb.

    ``idat`` replaces the compressed pixel data (e.g. with garbage that cannot be decoded).
    """
    if idat is None:
        row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
        compressor = zlib.compressobj(9)
        block, rows_per_block = row * 1000, 1000
        parts = [compressor.compress(block) for _ in range(height // rows_per_block)]
        parts.append(compressor.compress(row * (height % rows_per_block)))
        idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


async def failure_of(awaitable: Awaitable[Any]) -> Failure:
    with pytest.raises(Failure) as caught:
        await awaitable
    return caught.value


def decode_failure(data: bytes, max_pixels: int = 40_000_000, max_side: int = 1333) -> Failure:
    with pytest.raises(Failure) as caught:
        decode_image(data, max_pixels, max_side)
    return caught.value


@asynccontextmanager
async def fetcher_for(settings: Settings) -> AsyncIterator[ImageFetcher]:
    fetcher = ImageFetcher.from_settings(settings)
    try:
        yield fetcher
    finally:
        await fetcher.aclose()


async def load(settings: Settings, url: str) -> DecodedImage:
    async with fetcher_for(settings) as fetcher:
        return await load_image(fetcher, url, settings)


@asynccontextmanager
async def raw_server(respond: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[str]:
    """A loopback HTTP server that answers every request with whatever ``respond`` writes.

    For responses ``ImageHost`` cannot give: chunked bodies without a Content-Length, endless
    bodies, bytes dripping slowly.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await respond(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what the fetcher is supposed to do on these responses
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/image"


CHUNKED_HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
)


async def write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


# --- successful fetch and decode -----------------------------------------------------------------


async def test_png_decodes_to_rgb_pixels(settings: Settings, image_host: ImageHost) -> None:
    data = png_bytes(64, 48, seed=1)
    image = await load(settings, image_host.put(unique("a.png"), data))
    assert (image.width, image.height) == (64, 48)
    assert image.pixels.shape == (48, 64, 3) and image.pixels.dtype == np.uint8
    assert np.array_equal(image.pixels, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


async def test_jpeg_is_sniffed_not_taken_from_content_type(settings: Settings, image_host: ImageHost) -> None:
    url = image_host.put(unique("photo"), jpeg_bytes(120, 80), content_type="text/plain")
    image = await load(settings, url)
    assert (image.width, image.height) == (120, 80)
    assert image.pixels.shape == (80, 120, 3)


async def test_exif_rotated_jpeg_reports_rotated_size(settings: Settings, image_host: ImageHost) -> None:
    image = await load(settings, image_host.put(unique("r.jpg"), jpeg_bytes(120, 80, orientation=6)))
    assert (image.width, image.height) == (80, 120)
    assert image.pixels.shape == (120, 80, 3)
    # Orientation 6 = rotate 90° clockwise: the original left column (red 0) is now the top row.
    assert image.pixels[0, :, 0].mean() < 20 and image.pixels[-1, :, 0].mean() > 235


async def test_big_image_is_downscaled_and_keeps_original_size(
    settings: Settings, image_host: ImageHost
) -> None:
    small_side = settings.model_copy(update={"max_image_side": 100})
    image = await load(small_side, image_host.put(unique("big.png"), png_bytes(400, 300, seed=2)))
    assert (image.width, image.height) == (400, 300)
    assert image.pixels.shape == (75, 100, 3)


def test_big_rotated_jpeg_uses_draft_and_reports_original_oriented_size() -> None:
    image = decode_image(jpeg_bytes(1600, 800, orientation=8), 40_000_000, 100)
    assert (image.width, image.height) == (800, 1600)
    assert image.pixels.shape == (100, 50, 3)


def test_jpeg_decodes_at_the_smallest_dct_scale_that_keeps_the_models_side() -> None:
    data = jpeg_bytes(1600, 1200)
    full = decode_image(data, 40_000_000, 1333)
    assert full.pixels.shape == (1000, 1333, 3)  # no DCT step fits 1333 wide: full decode, then resize
    reduced = decode_image(data, 40_000_000, 1333, min_side=300)
    assert reduced.pixels.shape == (300, 400, 3)  # 1/4 scale: shortest side exactly 300
    assert (reduced.width, reduced.height) == (1600, 1200)
    # 1/4 would leave 300 < 320 on the shortest side, so 1/2 it is: the side is never undershot
    assert decode_image(data, 40_000_000, 1333, min_side=320).pixels.shape == (600, 800, 3)


def test_min_side_bound_follows_exif_orientation() -> None:
    image = decode_image(jpeg_bytes(1600, 800, orientation=8), 40_000_000, 1333, min_side=200)
    assert (image.width, image.height) == (800, 1600)
    assert image.pixels.shape == (400, 200, 3)


def test_min_side_never_upscales_a_small_image() -> None:
    assert decode_image(jpeg_bytes(300, 200), 40_000_000, 1333, min_side=512).pixels.shape == (200, 300, 3)


def test_image_smaller_than_max_side_is_not_upscaled() -> None:
    image = decode_image(png_bytes(30, 20), 40_000_000, 1333)
    assert image.pixels.shape == (20, 30, 3)


async def test_redirects_within_the_limit_are_followed(settings: Settings, image_host: ImageHost) -> None:
    target = image_host.put(unique("end.png"), png_bytes(16, 16))
    first = image_host.put(unique("hop1"), b"", status=302, headers={"location": target})
    start = image_host.put(unique("hop0"), b"", status=301, headers={"location": first})
    image = await load(settings, start)
    assert (image.width, image.height) == (16, 16)


async def test_chunked_body_without_content_length_under_the_cap(settings: Settings) -> None:
    data = png_bytes(32, 32, seed=3)

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEADERS)
        for start in range(0, len(data), 1000):
            await write_chunk(writer, data[start:start + 1000])
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_server(respond) as url:
        image = await load(settings, url)
    assert image.pixels.shape == (32, 32, 3)


# --- pixel modes ----------------------------------------------------------------------------------


def _paletted_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    return encode(image, "PNG", transparency=0)


def _cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")  # red in CMYK


def _sixteen_bit_png() -> bytes:
    values = np.full((8, 8), 0x8000, dtype=np.uint16)
    values[0, 0] = 0xFFFF
    return encode(Image.fromarray(values), "PNG")


@pytest.mark.parametrize(
    ("data", "corner", "center"),
    [
        pytest.param(_paletted_with_transparency(), (255, 0, 0), (255, 255, 255), id="palette+transparency"),
        pytest.param(encode(Image.new("RGBA", (8, 8), (0, 0, 255, 0)), "PNG"), (255, 255, 255),
                     (255, 255, 255), id="rgba-transparent-on-white"),
        pytest.param(encode(Image.new("LA", (8, 8), (0, 255)), "PNG"), (0, 0, 0), (0, 0, 0), id="la"),
        pytest.param(encode(Image.new("L", (8, 8), 77), "PNG"), (77, 77, 77), (77, 77, 77), id="gray"),
        pytest.param(encode(Image.new("1", (8, 8), 1), "PNG"), (255, 255, 255), (255, 255, 255), id="1-bit"),
        pytest.param(_cmyk_jpeg(), (255, 0, 0), (255, 0, 0), id="cmyk-jpeg"),
        pytest.param(_sixteen_bit_png(), (255, 255, 255), (128, 128, 128), id="16-bit-gray"),
        pytest.param(encode(Image.new("RGB", (8, 8), (10, 200, 30)), "GIF"), (10, 200, 30), (10, 200, 30),
                     id="gif"),
        pytest.param(encode(Image.new("RGB", (8, 8), (10, 200, 30)), "WEBP", lossless=True), (10, 200, 30),
                     (10, 200, 30), id="webp"),
        pytest.param(encode(Image.new("RGB", (8, 8), (10, 200, 30)), "BMP"), (10, 200, 30), (10, 200, 30),
                     id="bmp"),
        pytest.param(encode(Image.new("RGB", (8, 8), (10, 200, 30)), "TIFF"), (10, 200, 30), (10, 200, 30),
                     id="tiff"),
    ],
)
def test_every_mode_becomes_uint8_rgb(data: bytes, corner: tuple[int, ...], center: tuple[int, ...]) -> None:
    image = decode_image(data, 40_000_000, 1333)
    assert image.pixels.shape == (8, 8, 3) and image.pixels.dtype == np.uint8
    assert np.allclose(image.pixels[0, 0], corner, atol=3), image.pixels[0, 0]
    assert np.allclose(image.pixels[4, 4], center, atol=3), image.pixels[4, 4]


# --- hostile content --------------------------------------------------------------------------


async def test_text_served_as_png_is_not_an_image(settings: Settings, image_host: ImageHost) -> None:
    url = image_host.put(unique("fake.png"), b"<html>definitely a picture</html>", content_type="image/png")
    failure = await failure_of(load(settings, url))
    assert failure.code is ErrorCode.NOT_AN_IMAGE


def test_formats_outside_the_allowlist_are_not_images() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # would run Ghostscript
    assert decode_failure(eps).code is ErrorCode.NOT_AN_IMAGE
    assert decode_failure(b"").code is ErrorCode.NOT_AN_IMAGE


async def test_truncated_png_fails_to_decode(settings: Settings, image_host: ImageHost) -> None:
    data = png_bytes(64, 64, seed=4)
    failure = await failure_of(load(settings, image_host.put(unique("cut.png"), data[: len(data) // 2])))
    assert failure.code is ErrorCode.DECODE_FAILED


def test_truncated_jpeg_fails_to_decode() -> None:
    data = jpeg_bytes(200, 200)
    assert decode_failure(data[: len(data) // 2]).code is ErrorCode.DECODE_FAILED


async def test_decompression_bomb_is_refused(settings: Settings, image_host: ImageHost) -> None:
    bomb = bilevel_png(20_000, 20_000)  # 400 megapixels in ~50 KB
    assert len(bomb) < 200_000
    started = time.perf_counter()
    failure = await failure_of(load(settings, image_host.put(unique("bomb.png"), bomb)))
    assert failure.code is ErrorCode.TOO_MANY_PIXELS
    assert time.perf_counter() - started < 2.0


def test_pixel_limit_is_checked_before_decoding() -> None:
    # The pixel data is garbage: decoding it would fail, so TOO_MANY_PIXELS proves no decode ran.
    garbage = bilevel_png(3000, 2000, idat=b"not zlib at all")
    assert decode_failure(garbage, max_pixels=40_000_000).code is ErrorCode.DECODE_FAILED
    failure = decode_failure(garbage, max_pixels=5_000_000)
    assert failure.code is ErrorCode.TOO_MANY_PIXELS
    assert "3000x2000" in failure.message


async def test_pixel_limit_comes_from_settings(settings: Settings, image_host: ImageHost) -> None:
    tight = settings.model_copy(update={"max_image_pixels": 1_000})
    failure = await failure_of(load(tight, image_host.put(unique("px.png"), png_bytes(40, 30))))
    assert failure.code is ErrorCode.TOO_MANY_PIXELS


# --- byte cap ----------------------------------------------------------------------------------


async def test_declared_content_length_over_the_cap(settings: Settings, image_host: ImageHost) -> None:
    data = png_bytes(64, 64, seed=5)
    capped = settings.model_copy(update={"max_image_bytes": len(data) // 2})
    failure = await failure_of(load(capped, image_host.put(unique("big.png"), data)))
    assert failure.code is ErrorCode.IMAGE_TOO_LARGE
    assert "declares" in failure.message


async def test_endless_body_without_content_length_is_cut_off_while_streaming(settings: Settings) -> None:
    sent = 0

    async def respond(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(CHUNKED_HEADERS)
        while sent < 50_000_000:  # "endless"; bounded only so a broken fetcher cannot hang the test
            await write_chunk(writer, b"\x00" * 16_384)
            sent += 16_384

    capped = settings.model_copy(update={"max_image_bytes": 100_000})
    async with raw_server(respond) as url:
        failure = await failure_of(load(capped, url))
    assert failure.code is ErrorCode.IMAGE_TOO_LARGE
    assert "over the limit" in failure.message
    assert sent < 10_000_000


async def test_compressed_response_is_refused(settings: Settings, image_host: ImageHost) -> None:
    url = image_host.put(unique("gz.png"), png_bytes(8, 8), headers={"content-encoding": "gzip"})
    failure = await failure_of(load(settings, url))
    assert failure.code is ErrorCode.FETCH_FAILED
    assert "gzip" in failure.message


# --- HTTP errors, time and redirects -------------------------------------------------------------


async def test_404_is_an_http_error(settings: Settings, image_host: ImageHost) -> None:
    failure = await failure_of(load(settings, image_host.url(unique("missing.png"))))
    assert failure.code is ErrorCode.HTTP_ERROR
    assert "404" in failure.message


async def test_server_error_is_an_http_error(settings: Settings, image_host: ImageHost) -> None:
    url = image_host.put(unique("oops.png"), b"boom", content_type="text/plain", status=503)
    failure = await failure_of(load(settings, url))
    assert failure.code is ErrorCode.HTTP_ERROR
    assert "503" in failure.message


async def test_slow_server_times_out(settings: Settings, image_host: ImageHost) -> None:
    quick = settings.model_copy(update={"fetch_timeout_s": 0.5})
    url = image_host.put(unique("slow.png"), png_bytes(8, 8), delay_s=2.0)
    started = time.perf_counter()
    failure = await failure_of(load(quick, url))
    assert failure.code is ErrorCode.FETCH_TIMEOUT
    assert time.perf_counter() - started < 1.5


async def test_dripping_body_hits_the_overall_deadline(settings: Settings) -> None:
    # Each byte arrives well inside any per-read timeout; only a deadline on the whole fetch stops it.
    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEADERS)
        for _ in range(100):
            await write_chunk(writer, b"\x00")
            await asyncio.sleep(0.1)

    quick = settings.model_copy(update={"fetch_timeout_s": 0.5})
    started = time.perf_counter()
    async with raw_server(respond) as url:
        failure = await failure_of(load(quick, url))
    assert failure.code is ErrorCode.FETCH_TIMEOUT
    assert time.perf_counter() - started < 1.5


async def test_too_many_redirects(settings: Settings, image_host: ImageHost) -> None:
    assert settings.max_redirects == 3
    url = image_host.put(unique("end.png"), png_bytes(8, 8))
    for hop in range(5):
        url = image_host.put(unique(f"hop{hop}"), b"", status=302, headers={"location": url})
    failure = await failure_of(load(settings, url))
    assert failure.code is ErrorCode.TOO_MANY_REDIRECTS


@pytest.mark.parametrize(
    "location",
    ["http://169.254.169.254/latest/meta-data/", "http://2852039166/", "http://[::ffff:169.254.169.254]/",
     "http://10.0.0.1/"],
)
async def test_redirect_to_a_forbidden_address(
    settings: Settings, image_host: ImageHost, location: str
) -> None:
    url = image_host.put(unique("to-metadata"), b"", status=302, headers={"location": location})
    failure = await failure_of(load(settings, url))
    assert failure.code is ErrorCode.URL_FORBIDDEN


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://example.com/x.png"])
async def test_redirect_to_another_scheme_is_forbidden(
    settings: Settings, image_host: ImageHost, location: str
) -> None:
    url = image_host.put(unique("to-file"), b"", status=302, headers={"location": location})
    failure = await failure_of(load(settings, url))
    assert failure.code is ErrorCode.URL_FORBIDDEN


async def test_hostname_resolving_to_loopback_is_forbidden_without_allowlist(
    settings: Settings, image_host: ImageHost
) -> None:
    public_only = settings.model_copy(update={"allow_private_cidrs": ()})
    image_host.put("/x.png", png_bytes(8, 8))
    failure = await failure_of(load(public_only, f"http://localhost:{image_host.port}/x.png"))
    assert failure.code is ErrorCode.URL_FORBIDDEN
    assert "resolves to" in failure.message  # rejected on the resolved address, not on the name


@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://user:pw@example.com/a.png", "not a url"])
async def test_bad_urls_are_forbidden_before_any_request(settings: Settings, url: str) -> None:
    failure = await failure_of(load(settings, url))
    assert failure.code is ErrorCode.URL_FORBIDDEN


async def test_loopback_literal_is_forbidden_without_allowlist(
    settings: Settings, image_host: ImageHost
) -> None:
    public_only = settings.model_copy(update={"allow_private_cidrs": ()})
    failure = await failure_of(load(public_only, image_host.put(unique("x.png"), png_bytes(8, 8))))
    assert failure.code is ErrorCode.URL_FORBIDDEN


async def test_connection_refused_is_a_fetch_failure(settings: Settings) -> None:
    async with raw_server(lambda writer: asyncio.sleep(0)) as url:
        pass  # the server is closed again: its port now refuses connections
    failure = await failure_of(load(settings, url))
    assert failure.code is ErrorCode.FETCH_FAILED
