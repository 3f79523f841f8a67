"""Untrusted images in: fetched under the URL policy (``imaging.fetch``), decoded under size
limits (``imaging.decode``). Used by the API's processor and the bulk pipeline alike. Results
drawn on them (``imaging.pictures``) are imported from there, not here: Pillow's drawing and
the light client are not needed to fetch."""

from __future__ import annotations

import asyncio

from core.settings import Settings
from imaging.decode import DecodedImage, decode_image, decode_pixels
from imaging.fetch import ImageFetcher

__all__ = ["DecodedImage", "ImageFetcher", "decode_image", "decode_pixels", "load_image"]


async def load_image(fetcher: ImageFetcher, url: str, settings: Settings, min_side: int = 0) -> DecodedImage:
    """Fetch, then decode in a worker thread so the event loop keeps serving other images."""
    data = await fetcher.fetch(url)
    return await asyncio.to_thread(decode_image, data, settings.max_image_pixels, settings.max_image_side, min_side)
