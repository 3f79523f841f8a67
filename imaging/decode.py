"""Decoding untrusted image bytes (SPEC §6, "hostile images").

Decoding sniffs the content (never a Content-Type header), refuses decompression bombs by the
pixel count in the header before any pixel is decoded, and only ever decodes at most
``max_image_pixels``. Whatever goes wrong becomes a ``Failure`` with a stable code, so a bad
image fails that image and nothing else.

Memory (issue 15, item 7): the only full-resolution copy is the raster the format's decoder
produces (a JPEG's is already DCT-reduced). Conversion to RGB (alpha onto white, 16-bit and
float scaled to 8 bits) happens in horizontal bands of about ``BAND_PIXELS`` pixels, each
box-reduced as it is converted, so no full-resolution RGB, RGBA or float64 copy exists; EXIF
orientation is applied to the small result. ``decode_pixels`` tells, from the header alone, how
many pixels that raster has: what a caller's pixel budget reserves while the decode runs.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from core.failures import MAX_REASON_CHARS, Failure, describe
from core.schemas import ErrorCode

# Formats we decode. Pillow can open many more, some through external programs (EPS runs
# Ghostscript) or rarely exercised parsers; a client's bytes get only the common photo formats.
# (MPO, the multi-picture JPEG of many phones, is opened by the JPEG plugin.) Filtered to what
# this Pillow build has: naming a missing plugin would make ``Image.open`` fail for every image.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN)

# EXIF orientations that rotate by 90° or 270°: width and height swap.
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# Pixels converted at once: a band's RGBA and float64 working copies stay at a few tens of MB.
BAND_PIXELS = 1 << 20

# EXIF orientation → the transpose that undoes it (as ``ImageOps.exif_transpose``).
ORIENTATION_FIXES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the models, plus the size results are reported in."""

    pixels: np.ndarray  # uint8 HxWx3 RGB, longest side <= max_image_side (JPEGs: DCT-reduced to min_side)
    width: int  # original size (after EXIF orientation), before downscaling
    height: int


def decode_image(data: bytes, max_pixels: int, max_side: int, min_side: int = 0) -> DecodedImage:
    """Decode untrusted bytes to RGB pixels no larger than ``max_side``; CPU-bound and sync.

    The format comes from the content, never from a Content-Type header. The pixel limit is
    checked on the size the header declares, before anything is decoded. ``min_side`` is the
    shortest side the models need (``input_size``): a larger JPEG decodes at the largest DCT
    reduction (1/2, 1/4, 1/8) that keeps its shortest side at least that long, for a fraction of
    a full decode's CPU, and the models resize from there as they would from the full image.
    """
    with _open(data) as image:
        width, height = image.size
        if width * height > max_pixels:
            message = f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}"
            raise Failure(ErrorCode.TOO_MANY_PIXELS, message)
        if width < 1 or height < 1:
            raise Failure(ErrorCode.DECODE_FAILED, f"image declares an empty size {width}x{height}")
        try:
            return _decode(image, width, height, max_side, min_side)
        except Exception as exc:  # truncated or corrupt data, whatever the parser raises
            raise Failure(ErrorCode.DECODE_FAILED, describe(exc, MAX_REASON_CHARS)) from None


def decode_pixels(data: bytes, max_side: int, min_side: int = 0) -> int:
    """Pixels of the raster ``decode_image`` will hold at full resolution (a JPEG's after its DCT
    reduction), read from the header alone; 0 for bytes it will refuse before decoding anything.

    The decode's peak memory is about this many pixels in the image's own mode (1-4 bytes, 4 for
    float), plus a band: what a pixel budget should reserve before calling ``decode_image``."""
    try:
        with _open(data) as image:
            _draft(image, _orientation(image), max_side, min_side)
            return image.width * image.height
    except Exception:  # Failure, or what a truncated header raises: decode_image reports it
        return 0


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Failure(ErrorCode.TOO_MANY_PIXELS, describe(exc, MAX_REASON_CHARS)) from None
    except UnidentifiedImageError:
        message = f"content is not an image in a supported format ({', '.join(FORMATS)})"
        raise Failure(ErrorCode.NOT_AN_IMAGE, message) from None
    except Exception as exc:  # a recognised format whose header is corrupt
        raise Failure(ErrorCode.DECODE_FAILED, describe(exc, MAX_REASON_CHARS)) from None


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (TypeError, ValueError):
        return 1


def _draft(image: Image.Image, orientation: int, max_side: int, min_side: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale directly (a no-op for other formats): the
    smallest that is still at least the target size in both dimensions. Both bounds are
    symmetric in width and height, so orientation does not matter."""
    width, height = image.size
    if orientation in SWAPPING_ORIENTATIONS:
        width, height = height, width
    scale = max_side / max(width, height)
    if min_side > 0:
        scale = min(scale, min_side / min(width, height))
    if scale < 1:
        image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))


def _decode(image: Image.Image, width: int, height: int, max_side: int, min_side: int) -> DecodedImage:
    orientation = _orientation(image)
    if orientation in SWAPPING_ORIENTATIONS:
        width, height = height, width
    _draft(image, orientation, max_side, min_side)
    final = _fitted(image.size, max_side)
    rgb = _reduced_rgb(image, max_side)
    if rgb.size != final:
        rgb = rgb.resize(final, Image.Resampling.BICUBIC, reducing_gap=2.0)  # as ``thumbnail`` does
    if orientation in ORIENTATION_FIXES:
        rgb = rgb.transpose(ORIENTATION_FIXES[orientation])
    pixels = np.array(rgb, dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=width, height=height)


def _fitted(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The size ``thumbnail((side, side))`` gives an image of ``size``: within the square,
    aspect kept, each side rounded to the nearer aspect (computed before any reduction, whose
    whole-pixel sizes would round differently)."""
    width, height = size
    if width <= side and height <= side:
        return size
    aspect = width / height
    if aspect >= 1:
        return side, max(1, min(math.floor(side / aspect), math.ceil(side / aspect),
                                key=lambda n: abs(aspect - side / n) if n else math.inf))
    return max(1, min(math.floor(side * aspect), math.ceil(side * aspect), key=lambda n: abs(aspect - n / side))), side


def _reduced_rgb(image: Image.Image, max_side: int) -> Image.Image:
    """RGB, box-reduced by the largest whole factor that keeps the long side at least
    ``max_side`` (the final resampling then starts from at most twice its size), converted band
    by band."""
    factor = max(1, max(image.size) // max_side)
    if image.mode == "RGB":
        return image.reduce(factor) if factor > 1 else image
    width, height = image.size
    wide = image.mode in ("I", "F") and image.getextrema()[1] > 255  # 16-bit data stored as 32-bit
    rows = max(1, BAND_PIXELS // (width * factor)) * factor  # a multiple of the factor
    if rows >= height:
        rgb = _to_rgb(image, wide)
        return rgb.reduce(factor) if factor > 1 else rgb
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    for top in range(0, height, rows):
        band = _to_rgb(image.crop((0, top, width, min(top + rows, height))), wide)
        out.paste(band.reduce(factor) if factor > 1 else band, (0, top // factor))
    return out


def _to_rgb(image: Image.Image, wide: bool) -> Image.Image:
    """RGB for every mode we may meet: alpha goes onto white, 16-bit and float scale to 8 bits
    (``wide``: 32-bit values of the whole image exceed 255, so they are 16-bit data)."""
    if image.mode.startswith("I;16"):
        gray = np.asarray(image, dtype=np.uint16) >> 8
        return Image.fromarray(gray.astype(np.uint8), "L").convert("RGB")
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if wide:
            values = values / 257
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
