"""Fetching and decoding untrusted images (SPEC §6, "hostile images").

Every image URL and every image byte comes from a client, so each step has a bound: the
download goes through the SSRF-safe client (each redirect hop re-checked), runs under one
overall deadline and a byte cap enforced while streaming; decoding sniffs the content, refuses
decompression bombs by the pixel count in the header before any pixel is decoded, and only
ever decodes at most ``max_image_pixels``. Whatever goes wrong becomes a ``Failure`` with a
stable code, so a bad image fails that image and nothing else.
"""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from core.failures import Failure
from core.safe_http import safe_client
from core.schemas import ErrorCode
from core.settings import Settings
from core.urlpolicy import UrlPolicy

# Formats we decode. Pillow can open many more, some through external programs (EPS runs
# Ghostscript) or rarely exercised parsers; a client's bytes get only the common photo formats.
# (MPO, the multi-picture JPEG of many phones, is opened by the JPEG plugin.) Filtered to what
# this Pillow build has: naming a missing plugin would make ``Image.open`` fail for every image.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN)

# EXIF orientations that rotate by 90° or 270°: width and height swap.
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the models, plus the size results are reported in."""

    pixels: np.ndarray  # uint8 HxWx3 RGB, longest side <= max_image_side (JPEGs: DCT-reduced to min_side)
    width: int  # original size (after EXIF orientation), before downscaling
    height: int


class ImageFetcher:
    """Downloads image bytes through the URL policy with a deadline and a byte cap.

    One fetcher (and its connection pool) serves every download of a process; close it with
    ``aclose``.
    """

    def __init__(
        self, client: httpx.AsyncClient, policy: UrlPolicy, *, max_bytes: int, timeout_s: float
    ) -> None:
        self._client = client
        self._policy = policy
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        # Each redirect hop gets the same request-time URL check as the first URL (scheme,
        # credentials, address literals); the network backend then checks what it resolves to.
        client.event_hooks["request"].append(self._check_hop)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        policy = UrlPolicy.from_settings(settings)
        client = safe_client(
            policy,
            timeout=settings.fetch_timeout_s,
            follow_redirects=True,
            max_redirects=settings.max_redirects,
        )
        return cls(client, policy, max_bytes=settings.max_image_bytes, timeout_s=settings.fetch_timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _check_hop(self, request: httpx.Request) -> None:
        self._policy.check_url(str(request.url))

    async def fetch(self, url: str) -> bytes:
        """The body at ``url``; raises ``Failure`` with a code for every way a download can fail."""
        self._policy.check_url(url)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._download(url)
        except (TimeoutError, httpx.TimeoutException):
            message = f"image download took longer than {self._timeout_s:g}s"
            raise Failure(ErrorCode.FETCH_TIMEOUT, message) from None
        except httpx.TooManyRedirects:
            raise Failure(
                ErrorCode.TOO_MANY_REDIRECTS, f"more than {self._client.max_redirects} redirects"
            ) from None
        except httpx.UnsupportedProtocol as exc:  # a redirect to ftp:, file:, ...
            raise Failure(ErrorCode.URL_FORBIDDEN, _reason(exc)) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise Failure(ErrorCode.FETCH_FAILED, _reason(exc)) from None

    async def _download(self, url: str) -> bytes:
        # Ask for the bytes as stored and read them raw: a compressed response could expand far
        # beyond the cap inside a single decoded chunk, before any counting could stop it.
        headers = {"accept": "image/*", "accept-encoding": "identity"}
        async with self._client.stream("GET", url, headers=headers) as response:
            if not response.is_success:
                raise Failure(ErrorCode.HTTP_ERROR, f"image host answered HTTP {response.status_code}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise Failure(ErrorCode.FETCH_FAILED, f"unsupported Content-Encoding {encoding!r}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                message = f"image declares {declared} bytes; the limit is {self._max_bytes}"
                raise Failure(ErrorCode.IMAGE_TOO_LARGE, message)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self._max_bytes:
                    message = f"image is over the limit of {self._max_bytes} bytes"
                    raise Failure(ErrorCode.IMAGE_TOO_LARGE, message)
            return bytes(body)


def _reason(exc: Exception) -> str:
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"[:MAX_REASON_CHARS]


def decode_image(data: bytes, max_pixels: int, max_side: int, min_side: int = 0) -> DecodedImage:
    """Decode untrusted bytes to RGB pixels no larger than ``max_side``; CPU-bound and sync.

    The format comes from the content, never from a Content-Type header. The pixel limit is
    checked on the size the header declares, before anything is decoded. ``min_side`` is the
    shortest side the models need (``input_size``): a larger JPEG decodes at the largest DCT
    reduction (1/2, 1/4, 1/8) that keeps its shortest side at least that long, for a fraction of
    a full decode's CPU, and the models resize from there as they would from the full image.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Failure(ErrorCode.TOO_MANY_PIXELS, _reason(exc)) from None
    except UnidentifiedImageError:
        message = f"content is not an image in a supported format ({', '.join(FORMATS)})"
        raise Failure(ErrorCode.NOT_AN_IMAGE, message) from None
    except Exception as exc:  # a recognised format whose header is corrupt
        raise Failure(ErrorCode.DECODE_FAILED, _reason(exc)) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            message = f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}"
            raise Failure(ErrorCode.TOO_MANY_PIXELS, message)
        if width < 1 or height < 1:
            raise Failure(ErrorCode.DECODE_FAILED, f"image declares an empty size {width}x{height}")
        try:
            return _decode(image, width, height, max_side, min_side)
        except Exception as exc:  # truncated or corrupt data, whatever the parser raises
            raise Failure(ErrorCode.DECODE_FAILED, _reason(exc)) from None


def _decode(image: Image.Image, width: int, height: int, max_side: int, min_side: int) -> DecodedImage:
    if image.getexif().get(ExifTags.Base.Orientation, 1) in SWAPPING_ORIENTATIONS:
        width, height = height, width
    scale = max_side / max(width, height)
    if min_side > 0:
        scale = min(scale, min_side / min(width, height))
    if scale < 1:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly; draft picks the smallest that is
        # still at least this size in both dimensions (a no-op for other formats). Both bounds
        # are symmetric in width and height, so orientation does not matter.
        image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    ImageOps.exif_transpose(image, in_place=True)
    image = _to_rgb(image)
    image.thumbnail((max_side, max_side))
    pixels = np.array(image, dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=width, height=height)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every mode we may meet: alpha goes onto white, 16-bit and float scale to 8 bits."""
    if image.mode.startswith("I;16"):
        gray = np.asarray(image, dtype=np.uint16) >> 8
        return Image.fromarray(gray.astype(np.uint8), "L").convert("RGB")
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:  # 16-bit data stored as 32-bit
            values = values / 257
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


async def load_image(fetcher: ImageFetcher, url: str, settings: Settings, min_side: int = 0) -> DecodedImage:
    """Fetch, then decode in a worker thread so the event loop keeps serving other images."""
    data = await fetcher.fetch(url)
    return await asyncio.to_thread(decode_image, data, settings.max_image_pixels, settings.max_image_side, min_side)
