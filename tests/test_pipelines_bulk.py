"""The bulk pipeline on the session Ray: real loopback image host, real tiny models (random
weights, so only the shape of results is checked), real Redis for store-backed group runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from core.registry import decode_min_side, load_registry, serving_groups
from core.schemas import (
    EventType,
    GroupCreate,
    GroupImage,
    ImageStatus,
    ModelResult,
    ModelStatus,
)
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from imaging import decode_image
from notifier import NAMESPACE, start_notifier
from pipelines import bulk
from pipelines.columns import WANTED
from pipelines.dataset import BATCHES_PER_LOADER, PipelineOptions, build_pipeline, loader_count, row_status
from pipelines.group_run import process_group
from pipelines.sources import blocks, read_manifest, to_table
from tests.conftest import png_bytes
from tests.support.answers import assert_same_answer
from tests.support.servers import ImageHost, WebhookReceiver

MODEL = "object_detection"
CLIP_MODELS = ("room_classification", "condition_score", "quality_score")


@pytest.fixture(scope="module")
def bulk_settings(settings: Settings, tiny_models_dir: Path) -> Settings:
    return settings.model_copy(update={"models": "tiny", "models_dir": tiny_models_dir})


@pytest.fixture(scope="module")
def gpu_profile(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny registry as written for GPU nodes: the detector asks for half a GPU."""
    text = (Path(__file__).parent.parent / "core" / "profiles" / "tiny.yaml").read_text()
    registry = yaml.safe_load(text.replace("${models_dir}", str(tiny_models_dir)))
    registry["models"][MODEL]["resources"]["num_gpus"] = 0.5
    path = tmp_path_factory.mktemp("profiles") / "gpu.yaml"
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture(scope="module")
def image_urls(image_host: ImageHost) -> list[str]:
    """18 images of different sizes, then a 404 and a file that is not an image."""
    prefix = new_id("bulk")
    urls = [image_host.put(f"/{prefix}/{i}.png", png_bytes(40 + i, 30 + i, seed=i)) for i in range(18)]
    urls.append(image_host.url(f"/{prefix}/missing.png"))
    urls.append(image_host.put(f"/{prefix}/notes.png", b"this is not an image", content_type="image/png"))
    return urls


def check_detections(value: dict) -> None:
    assert value["status"] == "complete"
    assert value["version"].startswith(f"{MODEL}@")
    assert isinstance(value["result"]["detections"], list)


def test_run_over_urls_reports_each_image(
    ray_session: None, bulk_settings: Settings, image_urls: list[str]
) -> None:
    frame = bulk.run(image_urls, [MODEL], settings=bulk_settings, progress=False)

    assert len(frame) == 20
    assert frame["url"].tolist() == image_urls  # input order, whatever order batches finished in
    assert frame["id"].tolist() == list(range(20))
    good, missing, junk = frame.iloc[:18], frame.iloc[18], frame.iloc[19]
    assert (good["status"] == "complete").all() and good["error_code"].isna().all()
    assert good["width"].tolist() == [40 + i for i in range(18)]
    assert good["height"].tolist() == [30 + i for i in range(18)]
    for value in good[MODEL]:
        check_detections(value)
        json.dumps(value)  # JSON-able as it is
    assert (missing["status"], missing["error_code"]) == ("failed", "http_error")
    assert "404" in missing["error_message"]
    assert (junk["status"], junk["error_code"]) == ("failed", "not_an_image")
    assert missing[MODEL] is None and junk[MODEL] is None
    assert frame.attrs["images"] == 20


def test_a_loader_starts_only_for_the_rows_it_has_work_for(ray_session: None, tiny_models_dir: Path) -> None:
    """Each loader is a process that costs seconds to start: eight images once got four, and the
    run took twice as long as with one. Big inputs still get every CPU the models leave free."""
    groups = serving_groups([load_registry("tiny", tiny_models_dir)[MODEL]])
    options = PipelineOptions()
    most = loader_count(groups, options)
    assert most >= 2  # the session's Ray has CPUs for several
    per_loader = options.fetch_batch_size * BATCHES_PER_LOADER
    assert loader_count(groups, options, rows=8) == 1
    assert loader_count(groups, options, rows=per_loader) == 1
    assert loader_count(groups, options, rows=per_loader + 1) == 2
    assert loader_count(groups, options, rows=100_000) == most
    assert loader_count(groups, PipelineOptions(loaders=3), rows=8) == 3  # asked for: as asked


def test_the_shared_backbone_answers_as_the_separate_models(
    ray_session: None, bulk_settings: Settings, image_host: ImageHost, tiny_models_dir: Path
) -> None:
    """The three zero-shot models run as one stage (one forward per image); each image, whichever
    of them it wants (as a group run asks), gets each model's answer as its own runner gives it."""
    from models.zero_shot import ZeroShotClassifier

    registry = load_registry("tiny", tiny_models_dir)
    prefix = new_id("shared")
    data = [png_bytes(50 + 7 * i, 40 + 3 * i, seed=50 + i) for i in range(6)]
    urls = [image_host.put(f"/{prefix}/{i}.png", body) for i, body in enumerate(data)]
    wanted = [list(CLIP_MODELS), ["quality_score"], list(CLIP_MODELS), ["room_classification", "condition_score"],
              list(CLIP_MODELS), ["condition_score"]]
    table = pa.table({"id": [str(i) for i in range(len(urls))], "url": urls, WANTED: [json.dumps(w) for w in wanted]})
    specs = [registry[name] for name in CLIP_MODELS]
    pipeline = build_pipeline(table, specs, bulk_settings)  # the group runs' entry: rows want some models
    pipeline.context.enable_progress_bars = False
    out = pa.concat_tables(list(pipeline.iter_batches(batch_size=None, batch_format="pyarrow")))
    rows = {row["id"]: row for row in out.to_pylist()}
    min_side = decode_min_side(registry[name] for name in CLIP_MODELS)
    for name in CLIP_MODELS:
        runner = ZeroShotClassifier(registry[name])
        for i, body in enumerate(data):
            value = rows[str(i)][name]
            if name not in wanted[i]:
                assert value is None
                continue
            value = json.loads(value)
            image = decode_image(body, bulk_settings.max_image_pixels, bulk_settings.max_image_side, min_side)
            [expected] = runner.predict([image])
            assert value["status"] == "complete" and value["version"] == runner.version
            assert_same_answer(value["result"], expected)
    assert {row["status"] for row in rows.values()} == {"complete"}


def test_run_over_a_csv_manifest_writes_parquet(
    ray_session: None, bulk_settings: Settings, image_urls: list[str], tmp_path: Path, gpu_profile: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a registry that asks for a GPU, on this GPU-less Ray: the model runs on CPU."""
    manifest = tmp_path / "photos.csv"
    listings = ["L1", "L1", "L2", "L2", "L3", "L3"]
    pd.DataFrame({"id": [f"photo-{i}" for i in range(6)], "url": image_urls[14:], "listing": listings}).to_csv(
        manifest, index=False
    )
    output = tmp_path / "out" / "results.parquet"

    with caplog.at_level(logging.WARNING, logger="sightwire.placement"):
        summary = bulk.run(str(manifest), MODEL, settings=bulk_settings, profile=str(gpu_profile), output=output,
                           progress=False)
    assert f"model {MODEL} asks for 0.5 GPU" in caplog.text

    counts = {(row.status, row.error_code if isinstance(row.error_code, str) else None): row.images
              for row in summary.itertuples()}
    assert counts == {("complete", None): 4, ("failed", "http_error"): 1, ("failed", "not_an_image"): 1}
    assert summary.attrs["output"] == str(output) and summary.attrs["images"] == 6
    written = pd.read_parquet(output).sort_values("id").reset_index(drop=True)
    assert written["id"].tolist() == [f"photo-{i}" for i in range(6)]  # the manifest's ids and columns
    assert written["url"].tolist() == image_urls[14:] and written["listing"].tolist() == listings
    assert written["status"].tolist() == ["complete"] * 4 + ["failed"] * 2
    assert written["error_code"].tolist()[4:] == ["http_error", "not_an_image"]
    assert written["width"].tolist()[:4] == [54, 55, 56, 57]
    for value in written[MODEL].iloc[:4]:
        check_detections(json.loads(value))  # JSON strings in Parquet
    assert written[MODEL].iloc[4:].isna().all()


def test_sources_read_manifests_in_order(ray_session: None, bulk_settings: Settings, tmp_path: Path) -> None:
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": ["http://a/1.png", "http://a/2.png"], "room": ["kitchen", "bath"]}), parquet)
    assert to_table(parquet).to_pylist() == [  # positions, ids from positions, columns kept
        {"url": "http://a/1.png", "room": "kitchen", "id": 0, "_row": 0},
        {"url": "http://a/2.png", "room": "bath", "id": 1, "_row": 1},
    ]
    tsv = tmp_path / "m.tsv"
    tsv.write_text("url\tid\nhttp://a/1.png\tx\n")
    assert read_manifest(tsv).to_pylist() == [{"url": "http://a/1.png", "id": "x"}]
    with pytest.raises(ValueError, match="manifest must be"):
        read_manifest(tmp_path / "m.json")
    dataset = blocks(to_table([{"url": f"http://a/{i}.png", "room": "kitchen"} for i in range(70)]), 32)
    assert dataset.num_blocks() == 3
    rows = dataset.take_all()
    assert [row["_row"] for row in rows] == list(range(70)) and rows[5]["id"] == 5
    with pytest.raises(ValueError, match="no 'url' column"):
        to_table(pd.DataFrame({"link": ["http://a/1.png"]}))
    with pytest.raises(ValueError, match="unknown models"):
        bulk.run(["http://a/1.png"], ["no_such_model"], settings=bulk_settings, progress=False)


def test_row_status_follows_the_api_rule() -> None:
    done, failed = ModelStatus.COMPLETE.value, ModelStatus.FAILED.value  # each model's state on the row
    assert row_status({"a": done, "b": done}, None) == "complete"
    assert row_status({"a": done, "b": failed}, None) == "partial"
    assert row_status({"a": failed}, None) == "failed"
    assert row_status({"a": None}, "http_error") == "failed"


# --- store-backed group runs -------------------------------------------------------------------


@pytest.fixture
async def group_settings(bulk_settings: Settings) -> Settings:
    return bulk_settings.model_copy(update={"key_prefix": new_id("bulk"), "group_progress_interval_s": 60.0})


@pytest.fixture
def notifier_name(group_settings: Settings) -> Iterator[str]:
    """A notifier of this test's own (its settings, its key prefix), killed afterwards."""
    name = new_id("notifier")
    yield name
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)


async def test_group_run_skips_finished_images_and_resumes(
    ray_session: None,
    group_settings: Settings,
    image_urls: list[str],
    receiver: WebhookReceiver,
    notifier_name: str,
    org: str,
) -> None:
    store = Store.from_settings(group_settings)
    try:
        images = [GroupImage(url=url, external_id=f"p{i}") for i, url in enumerate(image_urls[8:])]
        group = await store.groups.create(
            org, GroupCreate(images=images, models=[MODEL], webhook_url=receiver.url("/hook"))
        )
        ids = await store.groups.ledger.image_ids(group.id)
        assert len(ids) == 12
        # A run that stopped half way: four images already done by an earlier run.
        earlier = ModelResult(status=ModelStatus.COMPLETE, version=f"{MODEL}@earlier", result={"detections": []})
        for image_id in ids[:4]:
            await store.images.mark_started(image_id, 1, 1)
            await store.images.write_model_result(image_id, MODEL, earlier)
            await store.images.finalize(image_id)
        start_notifier(group_settings, name=notifier_name)

        processed = await asyncio.to_thread(process_group, group_settings, group.id, ids)

        assert processed == 8
        records = {r.id: r for r in await store.images.get_many(ids)}
        for image_id in ids[:4]:  # skipped: the earlier results stand
            assert records[image_id].models[MODEL].version == f"{MODEL}@earlier"
        for image_id in ids[4:10]:
            record = records[image_id]
            assert record.status is ImageStatus.COMPLETE and record.width and record.height
            version = record.models[MODEL].version
            assert version.startswith(f"{MODEL}@") and version != earlier.version
        assert [records[i].error.code for i in ids[10:]] == ["http_error", "not_an_image"]
        assert all(records[i].status is ImageStatus.FAILED for i in ids[10:])
        final = await store.groups.get(group.id, org)
        assert (final.counts.complete, final.counts.failed, final.counts.pending) == (10, 2, 0)
        assert final.status is ImageStatus.PARTIAL

        # The group's completion reaches its webhook: the outbox's wake token woke this test's notifier.
        arrived = receiver.wait_for(
            lambda got: any(json.loads(r.body)["type"] == EventType.GROUP_COMPLETED for r in got), timeout_s=30
        )
        completed = next(json.loads(r.body) for r in arrived if json.loads(r.body)["type"] == EventType.GROUP_COMPLETED)
        assert completed["data"]["id"] == group.id
        assert completed["data"]["counts"]["complete"] == 10 and completed["data"]["counts"]["failed"] == 2

        # Run again (a retried task, a reclaimed job): nothing is left to do.
        assert await asyncio.to_thread(process_group, group_settings, group.id, ids) == 0
    finally:
        await store.close()


async def test_group_run_goes_on_past_an_image_it_cannot_write(
    ray_session: None, group_settings: Settings, image_urls: list[str], org: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Supervision of bulk runs: one image whose write fails unexpectedly (its group bookkeeping
    is corrupt, so its finalize raises) is logged with its image and group; the rest are written."""
    store = Store.from_settings(group_settings)
    try:
        images = [GroupImage(url=url) for url in image_urls[:3]]
        group = await store.groups.create(org, GroupCreate(images=images, models=[MODEL]))
        ids = await store.groups.ledger.image_ids(group.id)
        await store.redis.hset(store.keys.image(ids[0]), "contrib", "{not json")
        with caplog.at_level(logging.ERROR, logger="sightwire.group_run"):
            assert await asyncio.to_thread(process_group, group_settings, group.id, ids) == 3
        records = {r.id: r for r in await store.images.get_many(ids)}
        assert all(records[i].status is ImageStatus.COMPLETE for i in ids[1:])
        assert f"group {group.id}: writing image {ids[0]} failed" in caplog.text
    finally:
        await store.close()
