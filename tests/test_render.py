"""Pictures of results (imaging/pictures.py; the command: serve_app/render.py): boxes where the
detections say, the group page's
structure, the page in a real headless Chromium, and ``sightwire render`` against the session stack."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image as PILImage
from PIL import ImageColor

from core.failures import Failure
from core.schemas import ErrorCode
from core.settings import Settings
from imaging.pictures import Annotations, color_of, draw, group_page, load_pictures
from pipelines import bulk
from serve_app.cli import main
from serve_app.stack import LocalStack
from sightwire_client import Client
from sightwire_client.models import Group, Image
from tests.conftest import png_bytes
from tests.support.servers import ImageHost

GRAY = (128, 128, 128)
NOW = "2026-01-01T00:00:00Z"


def gray_png(width: int = 200, height: int = 150) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), GRAY).save(buffer, format="PNG")
    return buffer.getvalue()


def image_record(image_id: str = "img_1", *, status: str = "complete", external_id: str | None = None,
                 error: dict[str, str] | None = None) -> Image:
    """A finished image as the API returns it: a chair (normalised box), a tv (pixel box only),
    a room type and two scores."""
    def done(result: dict[str, Any]) -> dict[str, Any]:
        return {"status": "complete", "version": "v1", "result": result, "completedAt": NOW}

    models = {} if error else {
        "object_detection": done({"detections": [
            {"label": "chair", "score": 0.87, "box": {"xmin": 20, "ymin": 30, "xmax": 100, "ymax": 120},
             "boxNormalized": {"xmin": 0.1, "ymin": 0.2, "xmax": 0.5, "ymax": 0.8}},
            {"label": "tv", "score": 0.5, "box": {"xmin": 140, "ymin": 60, "xmax": 190, "ymax": 140}},
        ]}),
        "room_classification": done({"label": "kitchen", "confidence": 0.91}),
        "condition_score": done({"score": 4, "label": "good", "confidence": 0.6, "distribution": [0.1] * 5}),
        "quality_score": done({"score": 3, "label": "ok", "confidence": 0.5, "distribution": [0.2] * 5}),
    }
    return Image.model_validate({
        "id": image_id, "status": status, "sequence": 3, "createdAt": NOW, "updatedAt": NOW,
        "url": f"https://example.com/{image_id}.png", "models": models, "width": 200, "height": 150,
        "externalId": external_id, "error": error,
    })


def rgb(picture: PILImage.Image, x: int, y: int) -> tuple[int, int, int]:
    return picture.getpixel((x, y))  # type: ignore[return-value]


def test_boxes_drawn_where_the_detections_say() -> None:
    notes = Annotations.of_image(image_record())
    assert notes.caption() == "kitchen 91% · condition 4/5 · quality 3/5 · 2 detections"
    drawn = draw(PILImage.new("RGB", (200, 150), GRAY), notes)
    assert drawn.width == 200 and drawn.height > 150  # the caption strip below the image
    chair, tv = ImageColor.getrgb(color_of("chair")), ImageColor.getrgb(color_of("tv"))
    # The chair's box: (0.1, 0.2)-(0.5, 0.8) of 200x150 → x 20..100, y 30..119 (edges outlined).
    assert rgb(drawn, 20, 75) == chair and rgb(drawn, 100, 75) == chair and rgb(drawn, 60, 119) == chair
    assert rgb(drawn, 60, 75) == GRAY and rgb(drawn, 10, 75) == GRAY  # inside and outside: untouched
    assert rgb(drawn, 21, 28) == chair  # the label tag sits on top of the box
    # The tv has only a pixel box: 140..190 of 200 wide, 60..140 of 150 high.
    assert rgb(drawn, round(140 / 200 * 199), 100) == tv and rgb(drawn, 165, 100) == GRAY
    strip = drawn.crop((0, 150, 200, drawn.height))
    assert (255, 255, 255) in {c for _, c in strip.getcolors(10_000)}  # the caption is written


async def test_images_come_through_the_url_policy(settings: Settings, image_host: ImageHost) -> None:
    url = image_host.put("/render-gray.png", gray_png())
    [picture] = await load_pictures([url], settings)
    assert isinstance(picture, PILImage.Image) and picture.size == (200, 150)
    [refused] = await load_pictures([url], settings.model_copy(update={"allow_private_cidrs": ()}))
    assert isinstance(refused, Failure) and refused.code == ErrorCode.URL_FORBIDDEN


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def inline(img: dict[str, str | None]) -> PILImage.Image:
    """The picture of an ``<img>`` whose ``src`` is a base64 ``data:`` URI."""
    return PILImage.open(io.BytesIO(base64.b64decode(str(img["src"]).split(",", 1)[1])))


def sample_page() -> str:
    group = Group.model_validate({
        "id": "grp_1", "status": "partial", "sequence": 9, "createdAt": NOW, "updatedAt": NOW,
        "models": ["object_detection", "room_classification"],
        "counts": {"total": 4, "complete": 2, "failed": 1},
        "aggregates": {"overall": {"count": 2, "conditionCount": 2, "conditionMean": 4.0},
                       "byRoom": {"kitchen": {"count": 2, "conditionCount": 2, "conditionMean": 4.0}},
                       "failedExcluded": 1},
    })
    images = [image_record("img_1", external_id="<script>alert(1)</script>"), image_record("img_2"),
              image_record("img_3", status="failed", error={"code": "http_error", "message": "HTTP 404"})]
    picture = PILImage.new("RGB", (640, 480), GRAY)
    return group_page(group, images, [picture, picture, Failure(ErrorCode.HTTP_ERROR, "image host answered 404")])


def test_group_page_structure() -> None:
    page = sample_page()
    tags = Tags()
    tags.feed(page)
    images = tags.all("img")
    assert len(images) == 2 and len(tags.all("figure")) == 3  # the failed image: its error instead
    assert all(str(i["src"]).startswith("data:image/jpeg;base64,") for i in images)
    thumb = inline(images[0])
    assert thumb.width == 320 and thumb.height > 240  # 640x480 fitted in 320, plus the caption strip
    # Self-contained: nothing to load, no script, and what clients wrote is escaped.
    assert all(str(a.get("src", "data:")).startswith("data:") and "href" not in a for _, a in tags.tags)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(tags.all("tr")) == 3  # header, all, room: kitchen
    assert "room: kitchen" in page and "first 3 shown" in page and "http_error: image host answered 404" in page
    assert "kitchen 91% · condition 4/5 · quality 3/5 · 2 detections" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium installed (apt-get install chromium)")
def test_group_page_in_headless_chromium(tmp_path: Path) -> None:
    page, shot = tmp_path / "page.html", tmp_path / "shot.png"
    page.write_text(sample_page(), encoding="utf-8")
    # Offline where the machine allows a private network namespace: the page needs no network,
    # and Chromium's own background traffic stays off the wire (and is switched off anyway).
    unshare = ["unshare", "-n"]
    isolated = bool(shutil.which("unshare")) and subprocess.run([*unshare, "true"], capture_output=True).returncode == 0
    offline = unshare if isolated else []
    subprocess.run(
        [*offline, "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1024,768",
         page.as_uri()],
        check=True, capture_output=True, timeout=90,
    )
    screenshot = PILImage.open(shot).convert("RGB")
    assert screenshot.size == (1024, 768)
    colors = screenshot.getcolors(1 << 20) or []
    assert len(colors) > 50  # text, table borders and thumbnails, not a blank page
    chair = ImageColor.getrgb(color_of("chair"))
    assert any(sum(abs(a - b) for a, b in zip(c, chair, strict=True)) < 40 for _, c in colors)  # a box, on screen


async def test_bulk_frame_shows_thumbnails(settings: Settings, image_host: ImageHost) -> None:
    """``bulk.show`` under a running event loop, as in a Jupyter kernel."""
    record = image_record()
    frame = pd.DataFrame([
        {"url": image_host.put("/render-row.png", gray_png()), "id": "a", "status": "complete", "width": 200,
         "height": 150, "error_code": None, "error_message": None,
         **{name: m.model_dump(mode="json", by_alias=True) for name, m in record.models.items()}},
        {"url": image_host.url("/render-missing.png"), "id": "b", "status": "failed", "width": None, "height": None,
         "error_code": "http_error", "error_message": "image host answered HTTP 404", **dict.fromkeys(record.models)},
    ]).astype({"width": "Int64", "height": "Int64"})  # as bulk.run returns them: pd.NA where missing
    shown = bulk.show(frame, settings=settings)._repr_html_()
    tags = Tags()
    tags.feed(shown)
    assert len(tags.all("img")) == 1 and len(tags.all("figure")) == 2
    assert "2 detections" in shown and "http_error" in shown


@pytest.mark.integration
def test_render_command(stack: LocalStack, api_key: str, image_host: ImageHost, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTWIRE_API_KEY", api_key)
    monkeypatch.setenv("SIGHTWIRE_API_URL", stack.url)
    monkeypatch.delenv("SIGHTWIRE_ALLOW_PRIVATE_CIDRS", raising=False)
    url = image_host.put("/render-cli.png", png_bytes(96, 72, seed=3))
    with Client(api_key, base_url=stack.url) as client:
        group = client.wait(client.submit_group([url, url], ["object_detection", "room_classification"]), timeout=60)
        image_id = next(iter(client.iter_group_images(group.id))).id
    out = tmp_path / "out.png"
    # The CLI downloads the image under this machine's URL policy: loopback is refused by default.
    assert main(["render", image_id, "-o", str(out)]) == 1
    assert "url_forbidden" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("SIGHTWIRE_ALLOW_PRIVATE_CIDRS", "127.0.0.0/8")
    assert main(["render", image_id, "-o", str(out)]) == 0
    drawn = PILImage.open(out)
    assert drawn.format == "PNG" and drawn.width == 96 and drawn.height > 72  # a caption: the room type
    assert main(["render", group.id, "-o", str(tmp_path / "page.html")]) == 0
    tags = Tags()
    tags.feed((tmp_path / "page.html").read_text(encoding="utf-8"))
    assert len(tags.all("img")) == 2 and len(tags.all("tr")) >= 2
    assert inline(tags.all("img")[0]).width == 320  # a small image grows: readable labels
    assert main(["render", "img_missing", "-o", str(out)]) == 1
