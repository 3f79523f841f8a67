"""``sightwire bulk run MANIFEST --models … -o out.parquet``: the notebook API from the shell.

Runs ``pipelines.bulk.run`` over a CSV/Parquet manifest (a ``url`` column) on a local Ray, or
on ``--address``/``RAY_ADDRESS``, streaming every row into one Parquet file. One progress bar
counts images as they come out (on stderr, so ``--json`` output stays parseable); the summary
is the count per outcome. Settings (URL policy, models directory) come from the environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tqdm import tqdm


def _report(summary: Any) -> dict[str, Any]:
    """What ``bulk.run`` answered (a DataFrame of counts, totals in ``attrs``) as plain JSON."""
    outcomes = [{"status": row["status"], "images": int(row["images"]),
                 "errorCode": row["error_code"] if isinstance(row["error_code"], str) else None}  # NaN: none
                for row in summary.to_dict(orient="records")]
    attrs = summary.attrs
    return {"output": attrs["output"], "images": attrs["images"], "seconds": attrs["seconds"],
            "imagesPerS": attrs["images_per_s"], "outcomes": outcomes}


def _lines(report: dict[str, Any]) -> str:
    rows = [f"{o['images']:>8}  {o['status']}{' ' + o['errorCode'] if o['errorCode'] else ''}"
            for o in report["outcomes"]]
    return "\n".join([*rows, f"wrote {report['images']} rows to {report['output']} in {report['seconds']} s "
                              f"({report['imagesPerS']} images/s)"])


def cmd_bulk_run(args: argparse.Namespace) -> int:
    from pipelines import bulk
    from pipelines.sources import read_manifest

    try:
        manifest = read_manifest(args.manifest)
        with tqdm(total=manifest.num_rows, unit="img", desc="images", file=sys.stderr,
                  disable=args.no_progress) as bar:
            summary = bulk.run(manifest, args.models, profile=args.profile, models_dir=args.models_dir,
                               output=args.output, progress=False, address=args.address,
                               num_cpus=args.num_cpus, on_rows=bar.update)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = _report(summary)
    print(json.dumps(report, indent=2) if args.json else _lines(report))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ``bulk`` command group."""
    group = commands.add_parser("bulk", help="run models over a manifest with Ray Data").add_subparsers(
        dest="action", required=True
    )
    run = group.add_parser("run", help="run models over every image of a CSV/Parquet manifest into one Parquet file")
    run.add_argument("manifest", help="a .csv, .tsv, .csv.gz or .parquet file (local or a URI) with a url column")
    run.add_argument("--models", nargs="+", help="registry model names (default: every model of the profile)")
    run.add_argument("-o", "--output", required=True, help="the .parquet file to write, one row per image")
    run.add_argument("--profile", help="tiny | bench | pretrained | PATH to a registry YAML "
                     "(default: SIGHTWIRE_MODELS)")
    run.add_argument("--models-dir", help="where local profiles are built (default: SIGHTWIRE_MODELS_DIR)")
    run.add_argument("--address", help="a Ray cluster to run on (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all of this machine's)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.set_defaults(func=cmd_bulk_run)
