"""One bare bulk worker: the CPU limit of ``bench_bulk`` (issue 16), run one per core side by side.

The physical limit of a CPU node for a bulk job: every core a worker that fetches its share of
the images over HTTP, decodes each at the model's size, prepares it and runs the model batch
after batch, single-threaded, with no framework in between (no Ray, no object store, no pool):
``httpx.Client`` on keep-alive, ``imaging.decode_image``, the registry model's own ``prepare``
and ``run``. Started by ``benchmarks.common.side_by_side``: it loads the model, prints ``READY``,
waits for the go, works its share and prints one JSON line.

    python -m benchmarks.bulk_workers --base URL --images N --worker W --workers K --models-dir D
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
import torch

from benchmarks.common import READY
from core.registry import decode_min_side, load_registry
from core.settings import Settings
from imaging import decode_image
from models.families import load_runner

PROFILE = "bench"
MODEL = "object_detection"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the image server, serving /<i>.jpg")
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--spawned-at", type=float, required=True, help="time.time() when the parent started it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_registry(PROFILE, args.models_dir)[MODEL]
    runner = load_runner(spec)
    settings = Settings()
    side = decode_min_side([spec])
    size = spec.batching.max_batch_size
    paths = [f"/{i}.jpg" for i in range(args.worker, args.images, args.workers)]
    with httpx.Client(base_url=args.base, timeout=60) as client:
        load_s = time.time() - args.spawned_at
        print(READY, flush=True)
        sys.stdin.readline()
        started, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for start in range(0, len(paths), size):
                batch = []
                for path in paths[start:start + size]:
                    data = client.get(path).raise_for_status().content
                    image = decode_image(data, settings.max_image_pixels, settings.max_image_side, side)
                    batch.append(runner.prepare(image))
                runner.run(batch)
        span = time.perf_counter() - started
    print(json.dumps({"images": len(paths), "span_s": span, "load_s": load_s,
                      "cpu_ms_per_image": 1000 * (time.process_time() - cpu) / max(1, len(paths))}))


if __name__ == "__main__":
    main()
