"""Build ``dist/sightwire-<version>.zip``: Sightwire's code as a Ray ``runtime_env`` working_dir.

Ray fetches a remote working_dir (``https://``, ``s3://``, ``gs://``, ``file://``) as one zip
with a single top-level folder, unpacks it on every node that runs a replica and puts it first
on ``sys.path``; that is how the cluster configs in ``cluster/`` ship the code to official
``rayproject/ray`` images. The zip holds the packages ``pyproject.toml`` installs (its
``[tool.setuptools.packages.find] include``) with their data files, nothing else, and is
byte-for-byte reproducible (sorted entries, fixed timestamps).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def project(root: Path = ROOT) -> tuple[str, list[str]]:
    """The project's version and its top-level package folders."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(
        path.name for path in root.iterdir()
        if (path / "__init__.py").is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    )
    return config["project"]["version"], packages


def package_files(root: Path, packages: list[str]) -> list[Path]:
    files = []
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            parts = set(path.relative_to(root).parts)
            if path.is_file() and not parts & SKIPPED_DIRS and path.suffix not in SKIPPED_SUFFIXES:
                files.append(path)
    return files


def build(out_dir: Path, root: Path = ROOT) -> Path:
    """Write the zip into ``out_dir`` and return its path."""
    version, packages = project(root)
    top = f"sightwire-{version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{top}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in package_files(root, packages):
            entry = zipfile.ZipInfo(f"{top}/{path.relative_to(root).as_posix()}", date_time=EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
