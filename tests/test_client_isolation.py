"""The light client installs and imports on its own: it declares httpx and pydantic only, and
importing every module of it (``listen`` included) loads nothing outside the standard library
and those two packages' own dependencies — no Ray, torch, transformers, nor server code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import sightwire_client

CLIENT_ROOT = Path(sightwire_client.__file__).resolve().parent.parent
HEAVY = {"ray", "torch", "transformers", "numpy", "redis", "fastapi", "starlette", "standardwebhooks",
         "core", "serve_app", "notifier", "deployments", "pipelines"}

# A fresh interpreter, as if in a venv holding only the client and what it declares: a finder
# refuses every module outside the standard library and ``ALLOWED`` (so an optional import,
# such as httpx's of its CLI's ``click``, takes the path it takes when the package is absent).
PROBE = """
import importlib, importlib.abc, json, pkgutil, sys
ALLOWED = set(json.loads(sys.argv[1]))

class OnlyDeclared(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        root = name.split(".")[0]
        if root not in ALLOWED and root not in sys.stdlib_module_names and not root.startswith("_"):
            raise ImportError(f"{root} is not a dependency of the light client")

sys.meta_path.insert(0, OnlyDeclared())
import sightwire_client
for module in pkgutil.walk_packages(sightwire_client.__path__, "sightwire_client."):
    importlib.import_module(module.name)
sightwire_client.Client("sw_probe").close()
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def dependency_closure(names: set[str]) -> set[str]:
    """The installed distributions ``names`` need, transitively (extras excluded; one not installed,
    such as a backport for older Pythons, cannot be loaded either)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            required = [r for r in metadata.requires(name) or [] if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(requirement_names(required))
    return seen


def test_the_package_declares_httpx_and_pydantic_only() -> None:
    project = tomllib.loads((CLIENT_ROOT / "pyproject.toml").read_text())["project"]
    assert requirement_names(project["dependencies"]) == {"httpx", "pydantic"}
    assert project["name"] == "sightwire-client"
    assert project["scripts"] == {"sightwire-listen": "sightwire_client.listen:main"}


def probe(import_path: Path, cwd: Path) -> set[str]:
    """The top-level modules loaded by importing every client module from ``import_path``."""
    closure = dependency_closure({"httpx", "pydantic"})
    allowed = {module for module, dists in metadata.packages_distributions().items()
               if {d.lower().replace("_", "-") for d in dists} & closure} | {"sightwire_client"}
    assert {"httpx", "pydantic", "pydantic_core"} <= allowed and not allowed & HEAVY
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(sorted(allowed))], cwd=cwd,
                         env={"PYTHONPATH": str(import_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    loaded = set(json.loads(run.stdout.strip().splitlines()[-1]))
    assert {"sightwire_client", "httpx", "pydantic"} <= loaded and not loaded & HEAVY
    return loaded


def test_the_client_imports_with_nothing_but_its_declared_dependencies(tmp_path: Path) -> None:
    probe(CLIENT_ROOT, tmp_path)


def test_the_built_wheel_holds_the_client_alone_and_imports_on_its_own(tmp_path: Path) -> None:
    """Built from a copy (setuptools writes into the tree it builds), without the network."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this venv")
    source = shutil.copytree(CLIENT_ROOT, tmp_path / "client", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=120)
    [wheel] = (tmp_path / "dist").glob("sightwire_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in archive.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    assert requirement_names(requires) == {"httpx", "pydantic"}
    assert {n.split("/")[0] for n in names} == {"sightwire_client", wheel.name.split("-py3")[0] + ".dist-info"}
    probe(wheel, tmp_path)  # a pure-Python wheel is importable as a zip
