"""``sightwire bulk run`` on the session Ray: a CSV manifest of loopback images into Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.tokens import new_id
from serve_app.cli import main
from tests.conftest import png_bytes
from tests.support.servers import ImageHost

pytestmark = pytest.mark.integration


def test_bulk_run_writes_parquet_with_a_progress_bar(
    ray_session: None, tiny_models_dir: Path, image_host: ImageHost, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIGHTWIRE_MODELS", "tiny")
    monkeypatch.setenv("SIGHTWIRE_MODELS_DIR", str(tiny_models_dir))
    monkeypatch.setenv("SIGHTWIRE_ALLOW_PRIVATE_CIDRS", "127.0.0.0/8")
    prefix = new_id("clibulk")
    urls = [image_host.put(f"/{prefix}/{i}.png", png_bytes(40 + i, 30, seed=i)) for i in range(2)]
    urls.append(image_host.url(f"/{prefix}/missing.png"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,url,listing\n" + "".join(f"p{i},{u},L-{i}\n" for i, u in enumerate(urls)))
    out = tmp_path / "out.parquet"

    assert main(["bulk", "run", str(manifest), "--models", "object_detection", "-o", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    # The in-process Ray driver prints raylet warnings ("(raylet) WARNING: … worker processes") on
    # stdout when the session stack runs beside this pipeline: read the summary's JSON block.
    report = json.loads(captured.out[captured.out.index("{\n") : captured.out.rindex("}") + 1])
    assert (report["output"], report["images"]) == (str(out), 3)
    assert {(o["status"], o["errorCode"]): o["images"] for o in report["outcomes"]} == {
        ("complete", None): 2, ("failed", "http_error"): 1}
    assert "3/3" in captured.err  # the progress bar's last state
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == ["p0", "p1", "p2"] and {r["listing"] for r in rows} == {"L-0", "L-1", "L-2"}
    assert all(json.loads(r["object_detection"])["status"] == "complete" for r in rows if r["status"] == "complete")

    assert main(["bulk", "run", str(manifest), "--models", "no_such_model", "-o", str(out)]) == 1
    assert "no_such_model" in capsys.readouterr().err
