"""The bulk-inference example notebook runs top to bottom (nbclient, a real kernel).

It serves its own images on loopback and uses the tiny profile (random weights). The kernel is
a separate process; it joins the session's Ray through ``RAY_ADDRESS`` (which ``bulk.run``
honours like ``ray.init`` does) rather than paying for a Ray of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import ray
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "bulk_inference.ipynb"


def test_bulk_inference_notebook_runs(ray_session: None, tiny_models_dir: Path, monkeypatch) -> None:
    # The kernel inherits this environment: the session's tiny models and Ray, the repository.
    monkeypatch.setenv("SIGHTWIRE_MODELS_DIR", str(tiny_models_dir))
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}
    ).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "not_an_image" in shown and "http_error" in shown and "complete" in shown
    # bulk.show: a thumbnail for each of the six photos, the two failures named instead.
    pictures = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert pictures.count('src="data:image/jpeg;base64,') == 6 and pictures.count("<figure>") == 8
