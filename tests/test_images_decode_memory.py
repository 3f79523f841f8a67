"""Decoding reduces before it converts (issue 15, item 7): a large RGBA PNG or float TIFF costs
about its decoder's raster and no full-resolution RGB/RGBA/float64 copy, with the same output.

Peak memory is measured as RSS of a fresh child process (Pillow allocates outside Python's
allocator, so tracemalloc would not see it), with the benchmark's own probe.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.bench_decode_memory import decode_peak, source
from imaging import decode_image, decode_pixels

SIDE = 4000  # 16 MP, the case: 64 MB as RGBA or float, the raster Pillow must hold
MiB = 1024 * 1024


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_large_non_jpeg_decodes_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"large.{kind}"
    path.write_bytes(source(kind, SIDE, SIDE))
    measured = decode_peak(path, 1333)
    assert measured.shape == (1333, 1333, 3) and measured.size == (SIDE, SIDE)
    raster = SIDE * SIDE * 4
    # Before: the raster plus full-size RGBA/float64/RGB copies, ~300 MB (issue 15).
    assert measured.peak < raster + 40 * MiB, f"peak {measured.peak / MiB:.0f} MiB for a {raster / MiB:.0f} MiB raster"


def reference(image: Image.Image, side: int) -> np.ndarray:
    """The straightforward decode (convert at full size, then shrink) the bands must match."""
    rgba = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    flat.thumbnail((side, side))
    return np.asarray(flat, dtype=np.int16)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_banded_reduction_matches_a_full_size_conversion() -> None:
    """Alpha composited per band and box-reduced gives the picture a full-size conversion does
    (several bands at this size: ``BAND_PIXELS`` is 1 MP)."""
    x = np.linspace(0, 255, 3000)[None, :]
    y = np.linspace(0, 255, 2000)[:, None]
    planes = [x + 0 * y, y + 0 * x, (x + y) / 2, x + 0 * y]  # the alpha fades in left to right
    image = Image.fromarray(np.stack(planes, axis=-1).astype(np.uint8), "RGBA")
    decoded = decode_image(encoded(image, "PNG", compress_level=1), 40_000_000, 500)
    expected = reference(image, 500)
    assert decoded.pixels.shape == expected.shape == (333, 500, 3)
    difference = np.abs(decoded.pixels.astype(np.int16) - expected)
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 8


def test_float_scaling_is_decided_for_the_whole_image_not_per_band() -> None:
    """Values above 255 anywhere make the whole float image 16-bit data (divided by 257): the
    dark top half stays dark though its own band never exceeds 255."""
    values = np.zeros((3000, 2000), dtype=np.float32)
    values[:1500] = 200.0
    values[1500:] = 60000.0
    decoded = decode_image(encoded(Image.fromarray(values, "F"), "TIFF"), 40_000_000, 1000)
    assert decoded.pixels.shape == (1000, 667, 3)
    assert decoded.pixels[:400].max() <= 1 and decoded.pixels[-400:].min() >= 230


def test_decode_pixels_is_the_raster_the_decode_holds() -> None:
    png = encoded(Image.new("RGBA", (3000, 2000)), "PNG")
    assert decode_pixels(png, 1333) == 6_000_000
    jpeg = encoded(Image.new("RGB", (4000, 3000)), "JPEG")
    assert decode_pixels(jpeg, 1333) == 2000 * 1500  # the 1/2 DCT scale still covers 1333 x 1000
    assert decode_pixels(jpeg, 1333, min_side=300) == 500 * 375  # 1/8 still covers 400 x 300
    assert decode_pixels(b"not an image", 1333) == 0
    noise = encoded(Image.effect_noise((200, 200), 64), "PNG")
    assert decode_pixels(noise[:400], 1333) == 0  # its chunks cut off: decode_image then says why
