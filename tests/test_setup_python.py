"""How ``make`` picks the interpreter and the torch build (``tools/make_venv.py``).

Real interpreters (the ones on this machine), real pip with an isolated configuration
(``PIP_CONFIG_FILE=/dev/null`` and a find-links folder of the test's own), small but valid
wheels, and a loopback HTTP server standing in for the CPU wheel index; a refused loopback port
stands in for an unreachable one.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import platform
import re
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical

from serve_app.local import free_port
from tests.support.servers import ImageHost
from tools.make_venv import (
    SUPPORTED,
    CpuIndex,
    Interpreter,
    TorchBuild,
    choose,
    discover,
    probe,
    torch_source,
    torch_version,
)

ROOT = Path(__file__).resolve().parent.parent
VERSION = torch_version()


def write_wheel(directory: Path, version: str, tag: str) -> Path:
    """A minimal valid ``torch`` wheel for ``tag`` on this platform: enough for pip to resolve it."""
    name = f"torch-{version}-{tag}-{tag}-linux_{platform.machine()}.whl"
    info = f"torch-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}-{tag}-linux_"
                         f"{platform.machine()}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(directory / name, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return directory / name


@pytest.fixture
def find_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees no configuration of this machine, only this find-links folder."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


@pytest.fixture
def unreachable_index() -> CpuIndex:
    return CpuIndex(url=f"http://127.0.0.1:{free_port()}/whl/cpu", timeout_s=2)  # nothing listens


@pytest.fixture
def interpreters() -> list[Interpreter]:
    """The supported interpreters on this machine, newest first (at least the one running the tests)."""
    found = discover()
    assert found, "no supported interpreter found, yet one runs this test"
    assert all(i.version in SUPPORTED for i in found)
    assert [i.version for i in found] == sorted((i.version for i in found), reverse=True)
    return found


@pytest.fixture
def cpu_index() -> Iterator[ImageHost]:
    host = ImageHost().start()
    yield host
    host.stop()


def linux_only() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the +cpu build is a Linux matter; elsewhere PyPI's torch is the CPU build")


def test_pyproject_supports_the_interpreters_make_picks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    classifiers = {c for c in project["classifiers"] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert classifiers == {f"Programming Language :: Python :: {major}.{minor}" for major, minor in SUPPORTED}


def test_the_lock_pins_torch_and_every_dependency_of_the_cpu_build() -> None:
    """torch is installed without its dependencies (they come from the lock), so the lock holds them all."""
    installed = importlib.metadata.version("torch")
    assert installed.split("+")[0] == VERSION
    if not installed.endswith("+cpu"):
        pytest.skip(f"torch {installed} is not the +cpu build; it was installed with its own dependencies")
    pinned = {canonical(line.split("==")[0]) for line in (ROOT / "requirements.lock").read_text().split()}
    for line in importlib.metadata.requires("torch") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            assert canonical(requirement.name) in pinned, f"{requirement.name} is not pinned"


def test_a_local_cpu_wheel_is_used_offline_and_newer_interpreters_without_one_are_passed_over(
    find_links: Path, unreachable_index: CpuIndex, interpreters: list[Interpreter], capsys: pytest.CaptureFixture[str],
) -> None:
    linux_only()
    oldest = interpreters[-1]
    write_wheel(find_links, f"{VERSION}+cpu", oldest.tag)
    chosen, source = choose(interpreters, TorchBuild.CPU, unreachable_index, VERSION)
    assert chosen == oldest
    assert (source.requirement, source.pip_options, source.no_deps) == (f"torch=={VERSION}+cpu", ("--no-index",), True)
    passed_over = capsys.readouterr().err
    for newer in interpreters[:-1]:
        assert newer.path in passed_over and "unreachable" in passed_over


def test_the_newest_interpreter_wins_when_it_has_a_cpu_wheel(
    find_links: Path, unreachable_index: CpuIndex, interpreters: list[Interpreter],
) -> None:
    linux_only()
    for interpreter in interpreters:
        write_wheel(find_links, f"{VERSION}+cpu", interpreter.tag)
    chosen, _ = choose(interpreters, TorchBuild.CPU, unreachable_index, VERSION)
    assert chosen == interpreters[0]


def test_the_cpu_index_is_used_when_it_lists_a_build_for_the_interpreter(
    find_links: Path, cpu_index: ImageHost, interpreters: list[Interpreter],
) -> None:
    linux_only()
    newest = interpreters[0]
    wheel = f"torch-{VERSION}%2Bcpu-{newest.tag}-{newest.tag}-manylinux_2_28_{platform.machine()}.whl"
    cpu_index.put("/whl/cpu/torch/", f'<a href="/whl/{wheel}">{wheel}</a>'.encode(), "text/html")
    index = CpuIndex(url=cpu_index.url("/whl/cpu"))
    source = torch_source(TorchBuild.CPU, newest, index, VERSION)
    assert source is not None and source.pip_options == ("--index-url", index.url) and source.no_deps
    if len(interpreters) > 1:  # a build for another interpreter does not count
        assert torch_source(TorchBuild.CPU, interpreters[-1], index, VERSION) is None


def test_without_any_cpu_build_make_says_what_to_do(
    find_links: Path, unreachable_index: CpuIndex, interpreters: list[Interpreter],
) -> None:
    linux_only()
    with pytest.raises(SystemExit, match=r"download\.pytorch\.org reachable.*find-links.*TORCH=cuda"):
        choose(interpreters, TorchBuild.CPU, unreachable_index, VERSION)


def test_cuda_is_pypis_torch_with_its_dependencies(
    unreachable_index: CpuIndex, interpreters: list[Interpreter]
) -> None:
    source = torch_source(TorchBuild.CUDA, interpreters[0], unreachable_index, VERSION)
    assert source is not None
    assert (source.requirement, source.pip_options, source.no_deps) == (f"torch=={VERSION}", (), False)


def test_without_a_supported_interpreter_make_says_which_to_install(unreachable_index: CpuIndex) -> None:
    with pytest.raises(SystemExit, match=r"No Python 3\.11, 3\.12 or 3\.13.*pyenv install 3\.13"):
        choose([], TorchBuild.CPU, unreachable_index, VERSION)


def test_probe_accepts_supported_interpreters_only(tmp_path: Path) -> None:
    running = probe(sys.executable)
    assert running is not None and running.version == sys.version_info[:2]
    assert probe("/bin/true") is None  # runs, but is no Python
    assert probe(str(tmp_path / "missing")) is None
    old = tmp_path / "python-old"
    old.write_text("#!/bin/sh\necho 3 10 /usr/bin/python3.10\n")
    old.chmod(0o755)
    assert probe(str(old)) is None  # an interpreter outside 3.11-3.13
