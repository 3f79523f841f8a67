"""KubeRay's RayService schema, trimmed to what ``cluster/rayservice.yaml`` uses, for strict validation.

The vendored file (``kuberay_rayservice_schema.json``, next to this module) is the
``openAPIV3Schema`` of the ``v1`` version in KubeRay's CRD
``ray-operator/config/crd/bases/ray.io_rayservices.yaml`` (repository ray-project/kuberay, tag and
commit in its ``$comment``), trimmed by :func:`trim`: every property name the CRD defines is kept
at every level the manifest reaches, with the full schema for the properties the manifest sets
and an empty one for the rest (a pod template alone is ~68 kB). :func:`strict` then forbids
unknown properties, as ``kubectl apply`` with server-side field validation does, so a misspelt
field fails the test instead of being pruned silently by the API server.

Regenerate after changing the manifest (or to move to a newer KubeRay)::

    python -m tests.support.kuberay path/to/ray.io_rayservices.yaml TAG COMMIT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
SCHEMA_FILE = HERE / "kuberay_rayservice_schema.json"
MANIFEST = HERE.parent.parent / "cluster" / "rayservice.yaml"
SOURCE = "https://github.com/ray-project/kuberay/blob/{tag}/ray-operator/config/crd/bases/ray.io_rayservices.yaml"


def trim(schema: dict[str, Any], instances: list[Any]) -> dict[str, Any]:
    """``schema`` with only the subschemas ``instances`` reach; other property names map to ``{}``."""
    out = {key: value for key, value in schema.items() if key not in ("properties", "items", "additionalProperties")}
    objects = [i for i in instances if isinstance(i, dict)]
    if "properties" in schema:
        out["properties"] = {
            name: trim(sub, [o[name] for o in objects if name in o]) if any(name in o for o in objects) else {}
            for name, sub in schema["properties"].items()
        }
    if "items" in schema:
        out["items"] = trim(schema["items"], [x for i in instances if isinstance(i, list) for x in i])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = trim(schema["additionalProperties"], [v for o in objects for v in o.values()])
    elif "additionalProperties" in schema:
        out["additionalProperties"] = schema["additionalProperties"]
    return out


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy in which objects with listed properties accept no others (unless the CRD says so)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    return out


def load_schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA_FILE.read_text())
    schema.pop("$comment")
    return strict(schema)


def regenerate(crd_path: Path, tag: str, commit: str) -> None:
    crd = yaml.safe_load(crd_path.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    trimmed = trim(version["schema"]["openAPIV3Schema"], [yaml.safe_load(MANIFEST.read_text())])
    comment = f"trimmed by tests/support/kuberay.py from {SOURCE.format(tag=tag)} (commit {commit})"
    SCHEMA_FILE.write_text(json.dumps({"$comment": comment, **trimmed}, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    regenerate(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
