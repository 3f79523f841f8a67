"""Pictures of results: detection boxes, room type and scores drawn on the image (Pillow), a
group's self-contained HTML page and a bulk DataFrame's thumbnail grid (``pipelines.bulk.show``).

The images are downloaded again, and a URL in a record is as untrusted as when it was
submitted, so the download goes through the product's fetcher (URL policy, byte cap, deadline)
and decoder (pixel limits), never a bare GET. Records come as the light client's types (a
package below every other; it needs only httpx and pydantic). ``serve_app.render`` is the
``sightwire render`` command on top.
"""

from __future__ import annotations

import asyncio
import base64
import html
import io
import zlib
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont, ImageOps

from core.aggregates import ROOM_MODEL, SCORE_MODELS
from core.failures import Failure
from core.settings import Settings
from imaging import ImageFetcher, load_image
from sightwire_client.models import AggregateBucket, Group, Image, ModelStatus

T = TypeVar("T")
Picture = PILImage.Image | Failure  # an image's pixels, or why they could not be had

THUMB_SIDE = 320
FETCH_CONCURRENCY = 8
# Saturated colours that stay readable under white text; a label always gets the same one.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324", "#800000",
           "#808000", "#000075")
CAPTION_BACKGROUND = (32, 32, 32)


def color_of(label: str) -> str:
    return PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


@dataclass(frozen=True)
class Box:
    """One detection, its corners as fractions of the image's width and height."""

    label: str
    score: float
    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass(frozen=True)
class Annotations:
    """What a record says about its image, in the form the drawing needs."""

    boxes: tuple[Box, ...] = ()
    room: str | None = None
    room_confidence: float | None = None
    scores: tuple[tuple[str, int, int | None], ...] = ()  # (metric, score, levels)
    error: str | None = None

    @classmethod
    def from_results(cls, results: Mapping[str, Mapping[str, Any]], width: int | None, height: int | None,
                     error: str | None = None) -> Annotations:
        """From the ``result`` of each complete model: any result with ``detections`` gives boxes;
        the room and scores come from the models the group aggregates use."""
        boxes = [box for result in results.values() for box in _boxes(result, width, height)]
        room = results.get(ROOM_MODEL, {})
        scores = []
        for metric, model in SCORE_MODELS.items():
            if (result := results.get(model)) and result.get("score") is not None:
                levels = len(result["distribution"]) if result.get("distribution") else None
                scores.append((metric, int(result["score"]), levels))
        confidence = room.get("confidence")
        return cls(tuple(boxes), room.get("label"), None if confidence is None else float(confidence),
                   tuple(scores), error)

    @classmethod
    def of_image(cls, image: Image) -> Annotations:
        results = {name: m.result for name, m in image.models.items()
                   if m.status == ModelStatus.COMPLETE and m.result is not None}
        error = f"{image.error.code}: {image.error.message}" if image.error else None
        return cls.from_results(results, image.width, image.height, error)

    @classmethod
    def of_row(cls, row: Mapping[str, Any], models: Iterable[str]) -> Annotations:
        """From a row of ``pipelines.bulk.run``'s DataFrame (one dict column per model)."""
        results = {name: row[name]["result"] for name in models
                   if isinstance(row.get(name), Mapping) and row[name].get("status") == ModelStatus.COMPLETE
                   and row[name].get("result") is not None}
        code = row.get("error_code")
        error = f"{code}: {row.get('error_message')}" if isinstance(code, str) else None
        return cls.from_results(results, _int_or_none(row.get("width")), _int_or_none(row.get("height")), error)

    def caption(self) -> str:
        return " · ".join(self.caption_parts())

    def caption_parts(self) -> list[str]:
        parts = []
        if self.room is not None:
            confidence = "" if self.room_confidence is None else f" {self.room_confidence:.0%}"
            parts.append(f"{self.room}{confidence}")
        parts += [f"{metric} {score}" + (f"/{levels}" if levels else "") for metric, score, levels in self.scores]
        if self.boxes:
            parts.append(f"{len(self.boxes)} detection{'s' if len(self.boxes) != 1 else ''}")
        if self.error:
            parts.append(self.error)
        return parts


def _int_or_none(value: Any) -> int | None:
    """A DataFrame's size cell: an int, or missing (``None``, ``NaN``, ``pd.NA``)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _boxes(result: Mapping[str, Any], width: int | None, height: int | None) -> Iterable[Box]:
    for detection in result.get("detections") or ():
        corners = detection.get("boxNormalized")
        if corners is None and width and height and detection.get("box"):
            pixels = detection["box"]
            corners = {"xmin": pixels["xmin"] / width, "ymin": pixels["ymin"] / height,
                       "xmax": pixels["xmax"] / width, "ymax": pixels["ymax"] / height}
        if corners is not None:
            yield Box(str(detection.get("label", "?")), float(detection.get("score", 0.0)),
                      corners["xmin"], corners["ymin"], corners["xmax"], corners["ymax"])


def _wrap(pen: ImageDraw.ImageDraw, parts: Sequence[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
          width: float) -> list[str]:
    """The caption's parts joined into lines no wider than ``width`` (a part never splits)."""
    lines: list[str] = []
    for part in parts:
        joined = f"{lines[-1]} · {part}" if lines else part
        if lines and pen.textlength(joined, font=font) <= width:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def draw(picture: PILImage.Image, notes: Annotations) -> PILImage.Image:
    """A copy of ``picture`` with each box outlined in its label's colour (label and score in a
    tag at its top-left corner) and, when there is one, the caption on a dark strip below."""
    base = picture.convert("RGB")
    width, height = base.size
    font_px = max(11, round(min(width, height) / 24))
    line = max(2, round(min(width, height) / 160))
    font = ImageFont.load_default(size=font_px)
    lines = _wrap(ImageDraw.Draw(base), notes.caption_parts(), font, width - font_px)
    line_h = round(font_px * 1.4)
    canvas = PILImage.new("RGB", (width, height + (len(lines) * line_h + font_px // 2 if lines else 0)),
                          CAPTION_BACKGROUND)
    canvas.paste(base)
    pen = ImageDraw.Draw(canvas)
    for box in notes.boxes:
        x0, y0 = round(box.xmin * (width - 1)), round(box.ymin * (height - 1))
        x1, y1 = round(box.xmax * (width - 1)), round(box.ymax * (height - 1))
        color = color_of(box.label)
        pen.rectangle((x0, y0, x1, y1), outline=color, width=line)
        tag = f"{box.label} {box.score:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), tag, font=font)
        tag_h = bottom - top + 4
        ty = y0 - tag_h if y0 - tag_h >= 0 else y0 + line  # above the box, or inside at the top edge
        pen.rectangle((x0, ty, x0 + right - left + 6, ty + tag_h), fill=color)
        pen.text((x0 + 3 - left, ty + 2 - top), tag, fill="white", font=font)
    for i, text in enumerate(lines):
        pen.text((font_px // 2, height + font_px // 4 + i * line_h), text, fill="white", font=font)
    return canvas


def thumbnail(picture: PILImage.Image, notes: Annotations, side: int = THUMB_SIDE) -> PILImage.Image:
    """Fitted to ``side`` (small pictures grow too) and drawn after resizing, so every thumbnail
    has labels of the same readable size."""
    return draw(ImageOps.contain(picture.convert("RGB"), (side, side), PILImage.Resampling.LANCZOS), notes)


def data_uri(picture: PILImage.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- downloading the images again, under the product's rules ------------------------------------


async def load_pictures(urls: Sequence[str], settings: Settings) -> list[Picture]:
    """Each URL's pixels through the URL policy, byte cap and decode limits, a few at a time."""
    fetcher = ImageFetcher.from_settings(settings)
    gate = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(url: str) -> Picture:
        async with gate:
            try:
                return PILImage.fromarray((await load_image(fetcher, url, settings)).pixels)
            except Failure as failure:
                return failure

    try:
        return list(await asyncio.gather(*(one(url) for url in urls)))
    finally:
        await fetcher.aclose()


def run_sync(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from sync code, even under a running loop (a Jupyter kernel)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


# --- HTML: a group's page and a DataFrame's grid ------------------------------------------------

PAGE_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
table { border-collapse: collapse; margin: 12px 0 24px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 6px; }
figure img { width: 100%; display: block; }
figcaption { font-size: 12px; margin-top: 4px; overflow-wrap: anywhere; }
.missing { background: #eee; color: #a00; padding: 40px 8px; text-align: center; }
"""


def cell(picture: Picture, notes: Annotations, title: str, lines: Sequence[str]) -> str:
    """One ``<figure>``: the thumbnail with boxes (or why there is none) and escaped text lines."""
    if isinstance(picture, Failure):
        body = f'<div class="missing">{html.escape(f"{picture.code}: {picture.message}")}</div>'
    else:
        body = f'<img src="{data_uri(thumbnail(picture, notes))}" alt="{html.escape(title)}">'
    text = "<br>".join(html.escape(line) for line in [title, *lines] if line)
    return f"<figure>{body}<figcaption>{text}</figcaption></figure>"


def _mean(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def aggregates_table(buckets: Mapping[str, AggregateBucket]) -> str:
    head = ("bucket", "images", "condition n", "condition mean", "condition weighted", "quality n",
            "quality mean", "quality weighted")
    rows = [
        (name, str(b.count), str(b.condition_count), _mean(b.condition_mean), _mean(b.condition_weighted_mean),
         str(b.quality_count), _mean(b.quality_mean), _mean(b.quality_weighted_mean))
        for name, b in buckets.items()
    ]
    cells = ["".join(f"<th>{html.escape(h)}</th>" for h in head)]
    cells += ["".join(f"<td>{html.escape(v)}</td>" for v in row) for row in rows]
    return '<table class="aggregates">' + "".join(f"<tr>{c}</tr>" for c in cells) + "</table>"


def group_page(group: Group, images: Sequence[Image], pictures: Sequence[Picture]) -> str:
    """The whole group on one page, with nothing fetched from anywhere when it is opened."""
    counts = group.counts
    shown = f" (first {len(images)} shown)" if len(images) < counts.total else ""
    summary = (f"{group.status} · {counts.total} images{shown}: {counts.complete} complete, {counts.partial} "
               f"partial, {counts.failed} failed, {counts.canceled} canceled, {counts.pending} pending")
    buckets = {"all": group.aggregates.overall, **{f"room: {r}": b for r, b in group.aggregates.by_room.items()}}
    figures = "".join(
        cell(picture, notes := Annotations.of_image(image), image.external_id or image.id,
             [str(image.status), notes.caption()])
        for image, picture in zip(images, pictures, strict=True)
    )
    title = html.escape(f"Sightwire group {group.id}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{PAGE_STYLE}</style></head><body><h1>{title}</h1><p>{html.escape(summary)}</p>"
            f"<h2>Aggregates</h2>{aggregates_table(buckets)}"
            f"<p>failed images excluded: {group.aggregates.failed_excluded}</p>"
            f'<h2>Images</h2><div class="grid">{figures}</div></body></html>\n')


class FrameView:
    """A bulk-run DataFrame as a grid of thumbnails with boxes: Jupyter shows ``_repr_html_``."""

    def __init__(self, frame: Any, models: Sequence[str], pictures: Sequence[Picture]) -> None:
        self._rows = frame.to_dict("records")
        self._models = list(models)
        self._pictures = list(pictures)

    @classmethod
    def of(cls, frame: Any, settings: Settings, limit: int = 50) -> FrameView:
        """Downloads the first ``limit`` rows' images again (through the URL policy)."""
        head = frame.head(limit)
        models = [c for c in head.columns if any(isinstance(v, Mapping) and "status" in v for v in head[c])]
        return cls(head, models, run_sync(load_pictures(list(head["url"]), settings)))

    def _repr_html_(self) -> str:
        figures = "".join(
            cell(picture, notes := Annotations.of_row(row, self._models), str(row.get("id") or row["url"]),
                 [str(row.get("status", "")), notes.caption()])
            for row, picture in zip(self._rows, self._pictures, strict=True)
        )
        return f'<div class="sightwire"><style>{PAGE_STYLE}</style><div class="grid">{figures}</div></div>'
