"""The shipped cluster configs are valid for the tools that read them."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

CLUSTER = Path(__file__).parent.parent / "cluster"


def test_serve_config_is_valid_serve_schema() -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load((CLUSTER / "serve_config.yaml").read_text()))
    [app] = config.applications
    assert app.import_path == "serve_app:app"


def test_rayservice_embeds_a_valid_serve_config() -> None:
    service = yaml.safe_load((CLUSTER / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert serve_config.applications[0].import_path == "serve_app:app"
    gpu = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert gpu["minReplicas"] == 0 and gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]


def test_launcher_config_scales_gpu_workers_from_zero() -> None:
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert "6379" not in " ".join(config["head_start_ray_commands"])
