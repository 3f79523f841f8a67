"""Decoding untrusted image bytes (SPEC §6, "hostile images").

Decoding sniffs the content (never a Content-Type header), refuses decompression bombs by the
pixel count in the header before any pixel is decoded, and only ever decodes at most
``max_image_pixels``. Whatever goes wrong becomes a ``Failure`` with a stable code, so a bad
image fails that image and nothing else.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Failure(ErrorCode.TOO_MANY_PIXELS, describe(exc, MAX_REASON_CHARS)) from None
    except UnidentifiedImageError:
        message = f"content is not an image in a supported format ({', '.join(FORMATS)})"
        raise Failure(ErrorCode.NOT_AN_IMAGE, message) from None
    except Exception as exc:  # a recognised format whose header is corrupt
        raise Failure(ErrorCode.DECODE_FAILED, describe(exc, MAX_REASON_CHARS)) from None
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
            raise Failure(ErrorCode.DECODE_FAILED, describe(exc, MAX_REASON_CHARS)) from None


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
