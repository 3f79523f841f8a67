"""Create and fill the project's virtualenv (what ``make venv`` runs).

Stdlib only, so any ``python3`` can run it before anything is installed. The rules, also in
docs/operations.md ("Python versions and torch"):

- Sightwire runs on CPython 3.11, 3.12 and 3.13: Ray 2.60 and every package in
  ``requirements.lock`` have wheels for them.
- ``--python`` (``make PYTHON=...``) names the interpreter. Otherwise the newest supported one
  found (``python3.1x`` on PATH, pyenv's and uv's installs) for which the chosen torch build can
  be installed; the ones passed over are named, with the reason.
- ``--torch cpu`` (the default): on Linux the ``+cpu`` build, because PyPI's Linux torch is the
  multi-GB CUDA build. It comes from a wheel in pip's own find-links (pip.conf, PIP_FIND_LINKS;
  no network) or else from download.pytorch.org/whl/cpu, whose listing is read once with a short
  timeout, so an unreachable index costs seconds, not a hang. Elsewhere PyPI's torch is the CPU
  (macOS: CPU/MPS) build. ``--torch cuda``: PyPI's torch, the CUDA build on Linux (GPU nodes).
- An existing venv is kept and refilled (a changed lock); its interpreter must be supported.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
SUPPORTED = ((3, 13), (3, 12), (3, 11))  # newest first: the order of preference
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INDEX_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 60.0


class TorchBuild(str, Enum):  # noqa: UP042 - StrEnum is 3.11+; this runs under any python3, before the venv
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: tuple[int, int]

    @property
    def name(self) -> str:
        return f"Python {self.version[0]}.{self.version[1]} ({self.path})"

    @property
    def tag(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"


@dataclass(frozen=True)
class TorchSource:
    """Where torch comes from: the requirement and the pip options that select the build."""

    requirement: str
    pip_options: tuple[str, ...]
    origin: str
    # The lock pins torch's dependencies, so a build from a find-links folder or a torch-only index
    # is installed alone (its dependencies come from PyPI with the lock).
    no_deps: bool


def torch_version(lock: Path = LOCK) -> str:
    """The torch version pinned in the lock: the one place it is written."""
    match = re.search(r"^torch==([^\s+]+)$", lock.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{lock} pins no torch==VERSION")
    return match.group(1)


def _run(command: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def probe(path: str) -> Interpreter | None:
    """The interpreter at ``path`` if it runs, is supported and can make a venv (venv + ensurepip)."""
    done = _run([path, "-c", "import sys, venv, ensurepip; print(sys.version_info[0], sys.version_info[1], "
                             "sys.executable)"])
    parts = done.stdout.split(maxsplit=2) if done is not None and done.returncode == 0 else []
    if len(parts) != 3 or not (parts[0] + parts[1]).isdigit():
        return None  # a pyenv shim for a version that is not active, a broken install, no ensurepip
    version = (int(parts[0]), int(parts[1]))
    return Interpreter(parts[2].strip(), version) if version in SUPPORTED else None


def candidate_paths() -> list[str]:
    """Where supported interpreters usually are, newest version first."""
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    uv_root = Path.home() / ".local" / "share" / "uv" / "python"
    paths: list[str] = []
    for major, minor in SUPPORTED:
        name = f"python{major}.{minor}"
        found = shutil.which(name)
        if found:
            paths.append(found)
        paths += sorted(glob.glob(f"{pyenv_root}/versions/{major}.{minor}.*/bin/{name}"), reverse=True)
        paths += sorted(glob.glob(f"{uv_root}/cpython-{major}.{minor}.*/bin/{name}"), reverse=True)
    return paths


def discover() -> list[Interpreter]:
    """Every distinct supported interpreter found, newest version first."""
    found: dict[str, Interpreter] = {}
    for path in candidate_paths():
        interpreter = probe(path)
        if interpreter is not None:
            found.setdefault(os.path.realpath(interpreter.path), interpreter)
    return sorted(found.values(), key=lambda i: i.version, reverse=True)


def has_local_wheel(interpreter: Interpreter, requirement: str) -> bool:
    """Whether pip, with its own configuration but no index, finds a wheel of ``requirement``."""
    with tempfile.TemporaryDirectory(prefix="sightwire-probe-") as target:
        done = _run([interpreter.path, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
                     "--ignore-installed", "--no-index", "--only-binary=:all:", "--target", target, requirement])
    return done is not None and done.returncode == 0


class CpuIndex:
    """The CPU wheel index's torch listing, read once; unreachable means no CPU wheels from it."""

    def __init__(self, url: str = CPU_INDEX, timeout_s: float = INDEX_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._listing: str | None = None
        self.error = ""

    def listing(self) -> str:
        if self._listing is None:
            try:
                with urllib.request.urlopen(f"{self.url}/torch/", timeout=self.timeout_s) as response:
                    self._listing = response.read().decode("utf-8", "replace")
            except (OSError, urllib.error.URLError, ValueError) as exc:
                self._listing = ""
                self.error = f"{self.url} unreachable ({exc})"
        return self._listing

    def offers(self, version: str, interpreter: Interpreter) -> bool:
        tag = interpreter.tag
        wheel = re.compile(rf"torch-{re.escape(version)}(\+|%2B)cpu-{tag}-{tag}-manylinux[^\"'<>]*_"
                           rf"{re.escape(platform.machine())}\.whl")
        return bool(wheel.search(self.listing()))


def torch_source(build: TorchBuild, interpreter: Interpreter, index: CpuIndex, version: str) -> TorchSource | None:
    """How to install torch ``version`` of ``build`` for ``interpreter``, or None if it cannot be had."""
    if build is TorchBuild.CUDA or not sys.platform.startswith("linux"):
        origin = "PyPI (the CUDA build on Linux)" if sys.platform.startswith("linux") else "PyPI"
        return TorchSource(f"torch=={version}", (), origin, no_deps=False)
    requirement = f"torch=={version}+cpu"
    if has_local_wheel(interpreter, requirement):
        return TorchSource(requirement, ("--no-index",), "a wheel in pip's find-links", no_deps=True)
    if index.offers(version, interpreter):
        return TorchSource(requirement, ("--index-url", index.url), index.url, no_deps=True)
    return None


def choose(
    interpreters: list[Interpreter], build: TorchBuild, index: CpuIndex, version: str
) -> tuple[Interpreter, TorchSource]:
    """The newest interpreter for which torch can be installed; the passed-over ones are printed."""
    if not interpreters:
        raise SystemExit(
            "No Python 3.11, 3.12 or 3.13 with venv support found (looked for python3.13, python3.12, "
            "python3.11 on PATH and in pyenv and uv). Install one, e.g. `pyenv install 3.13`, "
            "`uv python install 3.13` or `apt-get install python3.12 python3.12-venv`, or run "
            "`make PYTHON=/path/to/python3.1x`."
        )
    for interpreter in interpreters:
        source = torch_source(build, interpreter, index, version)
        if source is not None:
            return interpreter, source
        reason = index.error or f"{index.url} has no {interpreter.tag} build"
        print(f"make_venv: passing over {interpreter.name}: no torch {version}+cpu for it "
              f"(none in pip's find-links; {reason})", file=sys.stderr)
    raise SystemExit(
        f"No CPU build of torch {version} can be installed for any interpreter found "
        f"({', '.join(i.name for i in interpreters)}). Make download.pytorch.org reachable, put a "
        f"torch-{version}+cpu wheel in pip's find-links, or on a GPU node run `make TORCH=cuda`."
    )


def pip(venv_python: Path, *args: str) -> None:
    command = [str(venv_python), "-m", "pip", *args]
    print("make_venv:", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def venv_interpreter(venv: Path) -> Interpreter | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    interpreter = probe(str(python))
    if interpreter is None:
        raise SystemExit(f"{venv} holds an unsupported or broken Python; remove it (`make clean`) and run make again")
    return Interpreter(str(python), interpreter.version)


def installed_version(interpreter: Interpreter, distribution: str) -> str:
    """The installed version of ``distribution`` in ``interpreter``'s environment, or ``""``."""
    done = _run([interpreter.path, "-c", "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
                 distribution])
    return done.stdout.strip() if done is not None and done.returncode == 0 else ""


def make_venv(venv: Path, build: TorchBuild, python: str | None) -> None:
    version = torch_version()
    index = CpuIndex()
    existing = venv_interpreter(venv)
    if existing is not None:
        interpreter = existing
        if installed_version(existing, "torch").split("+")[0] == version:
            source = None  # refilling (a changed lock): torch stays the build it is
        else:
            source = torch_source(build, interpreter, index, version)
            if source is None:
                raise SystemExit(f"no torch {version}+cpu for {interpreter.name}: {index.error or 'not offered'}")
    else:
        given = probe(python) if python else None
        if python and given is None:
            raise SystemExit(f"{python} is not a Python 3.11-3.13 that can make a venv")
        interpreter, source = choose([given] if given else discover(), build, index, version)
        print(f"make_venv: creating {venv} with {interpreter.name}", file=sys.stderr, flush=True)
        subprocess.run([interpreter.path, "-m", "venv", str(venv)], check=True)
    python_bin = venv / "bin" / "python"
    if source is not None:
        print(f"make_venv: torch {source.requirement} from {source.origin}", file=sys.stderr, flush=True)
        pip(python_bin, "install", "--quiet", *(("--no-deps",) if source.no_deps else ()), *source.pip_options,
            source.requirement)
    pip(python_bin, "install", "--quiet", "-r", str(LOCK))
    pip(python_bin, "install", "--quiet", "--no-deps", "-e", str(ROOT))
    pip(python_bin, "install", "--quiet", "--no-deps", "-e", str(ROOT / "client"))  # sightwire_client (listen)
    pip(python_bin, "check")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--torch", type=TorchBuild, choices=list(TorchBuild), default=TorchBuild.CPU)
    parser.add_argument("--python", help="the interpreter to use (default: the newest supported one found)")
    parser.add_argument("--show", action="store_true", help="print the choice as JSON; install nothing")
    args = parser.parse_args(argv)
    if args.show:
        version = torch_version()
        given = probe(args.python) if args.python else None
        interpreter, source = choose([given] if given else discover(), args.torch, CpuIndex(), version)
        print(json.dumps({"python": interpreter.path, "version": list(interpreter.version),
                          "torch": source.requirement, "origin": source.origin}))
        return 0
    make_venv(args.venv, args.torch, args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
