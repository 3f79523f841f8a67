"""The shipped cluster configs are valid for the tools that read them, and agree with each other.

- ``serve_config.yaml``: Serve's own schema; it ships the code (a remote-URI zip named after the
  project's version) and only settings that exist.
- ``rayservice.yaml``: KubeRay's RayService CRD (``tests.support.kuberay``), official images of
  this Ray, requests and limits, GCS fault tolerance on the Redis of ``redis.yaml``, and the same
  runtime_env as ``serve_config.yaml`` plus the pins of ``requirements.lock``.
- ``aws-gpu.yaml``: the cluster launcher's schema from the installed Ray wheel.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from core.settings import ENV_PREFIX, Settings
from tests.support.kuberay import load_schema
from tools.make_venv import SUPPORTED

ROOT = Path(__file__).parent.parent
CLUSTER = ROOT / "cluster"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE = re.compile(r"^rayproject/ray:(?P<ray>[\d.]+)-py3(?P<minor>\d+)-(?P<kind>cpu|gpu)$")


def load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def serve_app_runtime_env(config: dict[str, Any]) -> dict[str, Any]:
    app = ServeDeploySchema.model_validate(config).applications[0]
    assert app.import_path == "serve_app:app"
    return app.runtime_env


def rayservice() -> dict[str, Any]:
    return load("rayservice.yaml")


def containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def lock_pins() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().split()
    return {line.split("==")[0].lower(): line for line in lines if "==" in line}


def test_serve_config_is_valid_serve_schema() -> None:
    config = ServeDeploySchema.model_validate(load("serve_config.yaml"))
    [app] = config.applications
    assert app.import_path == "serve_app:app"


def test_serve_config_ships_the_code_and_only_known_settings() -> None:
    runtime_env = serve_app_runtime_env(load("serve_config.yaml"))
    uri = urlparse(runtime_env["working_dir"])
    assert uri.scheme in {"file", "https", "s3", "gs"}, "serve deploy needs a remote zip URI for the code"
    assert Path(uri.path).name == f"sightwire-{PYPROJECT['project']['version']}.zip", "not `make package`'s zip"
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {"REDIS_URL"}
    assert set(runtime_env["env_vars"]) <= fields, set(runtime_env["env_vars"]) - fields
    assert {"REDIS_URL", "SIGHTWIRE_MODELS"} <= set(runtime_env["env_vars"])
    Settings.from_env(runtime_env["env_vars"])  # every value parses


def test_rayservice_is_valid_for_kuberays_crd() -> None:
    jsonschema.validate(rayservice(), load_schema())


def test_rayservice_embeds_a_valid_serve_config() -> None:
    service = rayservice()
    assert service["kind"] == "RayService"
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert serve_config.applications[0].import_path == "serve_app:app"
    [gpu] = [g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["minReplicas"] == 0 and gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]


def test_rayservice_runs_the_official_images_of_this_ray_with_requests_and_limits() -> None:
    service = rayservice()
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    for container in containers(service):
        image = IMAGE.match(container["image"])
        assert image, container["image"]
        assert image["ray"] == ray.__version__ and (3, int(image["minor"])) in SUPPORTED, container["image"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], "Ray sizes a node by its limits; request the same"
        assert {"cpu", "memory"} <= set(resources["requests"])
        kind = "gpu" if "nvidia.com/gpu" in resources["limits"] else "cpu"
        assert image["kind"] == kind, f"{container['image']} for a {kind} pod"


def test_rayservice_ships_the_serve_configs_runtime_env_plus_pinned_pip() -> None:
    shipped = serve_app_runtime_env(load("serve_config.yaml"))
    embedded = serve_app_runtime_env(yaml.safe_load(rayservice()["spec"]["serveConfigV2"]))
    assert embedded["working_dir"] == shipped["working_dir"]
    assert embedded["env_vars"] == {k: v for k, v in shipped["env_vars"].items() if k != "REDIS_URL"}
    # What the image lacks: every direct dependency but Ray, at the lock's version.
    pins = lock_pins()
    names = [re.split(r"[\[<>=!~ ]", dep)[0].lower() for dep in PYPROJECT["project"]["dependencies"]]
    assert sorted(embedded["pip"]) == sorted(pins[name] for name in names if name != "ray")


def test_rayservice_gets_redis_from_the_example_secret_and_service() -> None:
    service = rayservice()
    secret, redis_service, statefulset = yaml.safe_load_all((CLUSTER / "redis.yaml").read_text())
    assert (secret["kind"], redis_service["kind"], statefulset["kind"]) == ("Secret", "Service", "StatefulSet")
    name, keys = secret["metadata"]["name"], set(secret["stringData"])
    for container in containers(service):
        [redis_url] = [e for e in container["env"] if e["name"] == "REDIS_URL"]
        assert redis_url["valueFrom"]["secretKeyRef"] == {"name": name, "key": "url"} and "url" in keys
    fault_tolerance = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert fault_tolerance["redisPassword"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "password"}
    port = redis_service["spec"]["ports"][0]["port"]
    assert fault_tolerance["redisAddress"] == f"{redis_service['metadata']['name']}:{port}"
    url = urlparse(secret["stringData"]["url"])
    assert (url.hostname, url.port, url.password) == (redis_service["metadata"]["name"], port,
                                                      secret["stringData"]["password"])
    assert redis_service["spec"]["selector"] == statefulset["spec"]["template"]["metadata"]["labels"]


def test_rayservice_gcs_port_is_not_6379_and_matches_the_container_port() -> None:
    head = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]
    [gcs] = [p for p in head["template"]["spec"]["containers"][0]["ports"] if p["name"] == "gcs-server"]
    assert head["rayStartParams"]["port"] == str(gcs["containerPort"]) != "6379"


def test_launcher_config_is_valid_for_rays_launcher_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load("aws-gpu.yaml"), schema)


def test_launcher_config_runs_official_images_and_ships_the_serve_config() -> None:
    config = load("aws-gpu.yaml")
    head, worker = IMAGE.match(config["docker"]["head_image"]), IMAGE.match(config["docker"]["worker_image"])
    assert head and worker and (head["kind"], worker["kind"]) == ("cpu", "gpu")
    assert {head["ray"], worker["ray"]} == {ray.__version__}
    # The serve config's working_dir is the zip that file_mounts put on every node.
    working_dir = urlparse(serve_app_runtime_env(load("serve_config.yaml"))["working_dir"])
    assert config["file_mounts"][working_dir.path] == f"./dist/{Path(working_dir.path).name}"
    assert config["file_mounts"]["/opt/sightwire/serve_config.yaml"] == "./cluster/serve_config.yaml"
    # Nodes install the lock; the CPU head pins the +cpu torch build first.
    torch = lock_pins()["torch"]
    assert any(f"{torch}+cpu" in c and "download.pytorch.org/whl/cpu" in c for c in config["head_setup_commands"])
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        assert "pip install -r /opt/sightwire/requirements.lock" in commands


def test_launcher_config_scales_gpu_workers_from_zero() -> None:
    config = load("aws-gpu.yaml")
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert "6379" not in " ".join(config["head_start_ray_commands"])


def test_both_configs_log_json_through_serve_and_sightwires_hook() -> None:
    """On a cluster as under ``sightwire serve``: Serve's logging config in JSON at INFO, and every
    worker runs Sightwire's setup hook in JSON, or ``sightwire.*`` INFO lines never reach the logs."""
    from serve_app import worker_logs

    for config in (load("serve_config.yaml"), yaml.safe_load(rayservice()["spec"]["serveConfigV2"])):
        app = ServeDeploySchema.model_validate(config).applications[0]
        assert (app.logging_config.encoding, app.logging_config.log_level) == ("JSON", "INFO")
        assert app.runtime_env["worker_process_setup_hook"] == worker_logs.HOOK
        assert app.runtime_env["env_vars"][worker_logs.FORMAT_VARIABLE] == worker_logs.LogFormat.JSON
