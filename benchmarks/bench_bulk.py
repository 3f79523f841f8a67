"""Bulk pipeline throughput against its limit (SPEC §8: >= 90 % of the bare inference loop).

The limit is the model alone: the registry model loaded with ``load_runner`` in this process,
its images already decoded and prepared (resized to the model's input), run batch after batch
(``runner.run``, under ``torch.inference_mode``) at the registry's batch size. Two limits are
measured: the plain loop with torch's default threads (every core), and — stricter on CPUs,
where one forward spread over several threads wastes some of them — one single-threaded loop
per core side by side. ``ratio`` is against the first, ``ratio_vs_loop_per_core`` the second.

The pipeline is the real thing: ``pipelines.bulk`` over URLs served on loopback, so every image
is fetched over HTTP (SSRF-safe client), decoded and prepared on the same CPUs while the model
runs; the model's pool has one single-threaded actor per core (``--actors``), the same model
and batch size. It is timed from its first download to its last result: the pool waits for its
actors before any image flows (``wait_for_min_actors_s``), so no fetching or decoding can hide
inside model start-up, and every image is downloaded, decoded, prepared and run inside the
timed span (the pipeline's fill included). Start-up (Ray Data plan, actors, model load) is
reported separately, with the end-to-end rate.

Model: the ``bench`` profile's ``object_detection`` (DETR, mid-size shapes, random weights:
tens of ms per image on a laptop CPU), built locally on first use.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_bulk.py [--images 512] [--size 640x480] [--stats]

Last line: one JSON object with ``ratio`` (pipeline / limit) and ``target``.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from core.registry import Autoscaling, Resources, load_registry
from core.settings import Settings
from deployments.images import decode_image
from deployments.models import load_runner
from deployments.tiny import ensure_local_profile
from pipelines import bulk
from pipelines.dataset import PipelineOptions

TARGET = 0.90
PROFILE = "bench"
MODEL = "object_detection"


def photo(width: int, height: int, seed: int) -> bytes:
    """A JPEG with photo-like statistics (smooth gradients plus sensor noise), ~50-100 KB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class ImageServer:
    """Loopback HTTP server for the images; records when each one was downloaded."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.fetched_at: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = images.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-type", "image/jpeg")
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")
                outer.fetched_at.append(time.monotonic())

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def bare_loop(spec, images: list[bytes], settings: Settings, repeats: int) -> dict[str, float]:
    """Images/s of the model alone on pre-decoded, pre-prepared images (best of ``repeats``).

    Two limits: the plain loop with torch's default threads (the SPEC's "bare loop"), and one
    single-threaded loop per core running side by side (stricter on CPUs, where one forward
    uses several threads less efficiently than one forward per core)."""
    runner = load_runner(spec)
    decoded = [decode_image(data, settings.max_image_pixels, settings.max_image_side) for data in images]
    prepared = [runner.prepare(image) for image in decoded]
    size = spec.batching.max_batch_size
    batches = [prepared[i:i + size] for i in range(0, len(prepared), size)]
    threads = torch.get_num_threads()
    with torch.inference_mode():
        for batch in batches[:2]:  # warm-up
            runner.run(batch)
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            for batch in batches:
                runner.run(batch)
            runs.append(len(prepared) / (time.perf_counter() - started))
        # For reference: the same loop with the per-image preparation (resize) included.
        started = time.perf_counter()
        for i in range(0, len(decoded), size):
            runner.predict(decoded[i:i + size])
        with_prepare = len(decoded) / (time.perf_counter() - started)

    def loop(share: list) -> None:
        with torch.inference_mode():  # thread-local: each loop enters it itself
            for batch in share:
                runner.run(batch)

    cores = os.cpu_count() or 1
    torch.set_num_threads(1)
    per_core = []
    try:
        for _ in range(repeats):
            loops = [threading.Thread(target=loop, args=(batches[i::cores],)) for i in range(cores)]
            started = time.perf_counter()
            for thread in loops:
                thread.start()
            for thread in loops:
                thread.join()
            per_core.append(len(prepared) / (time.perf_counter() - started))
    finally:
        torch.set_num_threads(threads)
    return {
        "images_per_s": max(runs), "runs": runs, "threads": threads, "with_prepare_images_per_s": with_prepare,
        "per_core_images_per_s": max(per_core), "per_core_runs": per_core,
    }


def pipeline(
    spec, urls: list[str], settings: Settings, server: ImageServer, decode_side: int | None, show_stats: bool
) -> dict[str, float]:
    """Images/s of ``bulk``'s pipeline over ``urls`` once its model is loaded, and its start-up.

    The model pool waits for its actor before any batch is dispatched, so the first download
    marks the end of start-up; from there to the last result, every image is fetched, decoded,
    prepared and run."""
    options = PipelineOptions(wait_for_min_actors_s=600, decode_side=decode_side)
    started = time.monotonic()
    stream, _ = bulk.stream(urls, [spec], settings, progress=False, options=options)
    last = started
    statuses: dict[str, int] = {}
    for table in stream.iter_batches(batch_size=None, batch_format="pyarrow"):
        last = time.monotonic()
        for status in table["status"].to_pylist():
            statuses[status] = statuses.get(status, 0) + 1
    first_fetch = min(server.fetched_at)
    if show_stats:
        print(stream.stats())
    return {
        "images_per_s": len(urls) / (last - first_fetch),
        "startup_s": first_fetch - started,
        "end_to_end_images_per_s": len(urls) / (last - started),
        "window_s": last - first_fetch,
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", default="640x480", help="image width x height")
    parser.add_argument("--repeats", type=int, default=3, help="bare-loop repeats (best is the limit)")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1,
                        help="model actors (default: one per core); each gets cores/actors CPUs and as many "
                             "torch threads")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's per-stage timing")
    parser.add_argument("--decode-side", type=int, default=None,
                        help="PipelineOptions.decode_side (default: Settings.max_image_side, as the API)")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "sightwire-bench-models")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cores = os.cpu_count() or 1

    ensure_local_profile(args.models_dir, PROFILE)
    # The registry's model at its batch size, given every core as the bare loop has them: by
    # default one single-threaded actor per core (Ray sets a worker's torch threads to its CPUs).
    spec = load_registry(PROFILE, args.models_dir)[MODEL]
    spec = spec.model_copy(update={
        "resources": Resources(num_cpus=cores // args.actors, num_gpus=0),
        "autoscaling": Autoscaling(min_replicas=args.actors, max_replicas=args.actors),
    })
    settings = Settings(allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),), fetch_timeout_s=60)
    images = {f"/{i}.jpg": photo(width, height, seed=i) for i in range(args.images)}
    sizes = [len(b) for b in images.values()]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"machine: {platform.machine()}, {cores} CPUs, {device}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), Ray {ray.__version__}")
    print(f"model: {PROFILE}/{MODEL} (random weights), input {spec.input_size}px, "
          f"batch {spec.batching.max_batch_size}; {args.images} JPEGs {width}x{height}, "
          f"median {statistics.median(sizes) / 1024:.0f} KB")

    limit = bare_loop(spec, list(images.values()), settings, args.repeats)
    print(f"limit (bare inference_mode loop, prepared images, {limit['threads']} torch threads): "
          f"{limit['images_per_s']:.1f} images/s (runs {', '.join(f'{r:.1f}' for r in limit['runs'])}); "
          f"with per-image prepare: {limit['with_prepare_images_per_s']:.1f} images/s")
    print(f"stricter limit (one single-threaded loop per core, side by side): "
          f"{limit['per_core_images_per_s']:.1f} images/s "
          f"(runs {', '.join(f'{r:.1f}' for r in limit['per_core_runs'])})")

    server = ImageServer(images)
    # One Ray CPU per core for the model actor, one more for the fetch/decode tasks.
    bulk.ensure_ray(num_cpus=cores + 1)
    try:
        measured = pipeline(spec, [server.url(p) for p in images], settings, server, args.decode_side, args.stats)
    finally:
        server.stop()
        ray.shutdown()
    assert measured["statuses"] == {"complete": args.images}, measured["statuses"]
    ratio = measured["images_per_s"] / limit["images_per_s"]
    strict = measured["images_per_s"] / limit["per_core_images_per_s"]
    print(f"pipeline (fetch over HTTP + decode + inference, first download to last result): "
          f"{measured['images_per_s']:.1f} images/s over {measured['window_s']:.1f} s")
    print(f"pipeline start-up (plan, actor, model load): {measured['startup_s']:.1f} s; "
          f"end to end {measured['end_to_end_images_per_s']:.1f} images/s")
    print(f"ratio = {ratio:.3f} (target >= {TARGET}); against one loop per core: {strict:.3f}")
    print(json.dumps({
        "benchmark": "bulk_pipeline",
        "ratio": round(ratio, 4),
        "target": TARGET,
        "ratio_vs_loop_per_core": round(strict, 4),
        "pipeline_images_per_s": round(measured["images_per_s"], 2),
        "limit_images_per_s": round(limit["images_per_s"], 2),
        "limit_with_prepare_images_per_s": round(limit["with_prepare_images_per_s"], 2),
        "limit_loop_per_core_images_per_s": round(limit["per_core_images_per_s"], 2),
        "startup_s": round(measured["startup_s"], 2),
        "end_to_end_images_per_s": round(measured["end_to_end_images_per_s"], 2),
        "images": args.images,
        "image_size": args.size,
        "batch_size": spec.batching.max_batch_size,
        "cpus": cores,
        "actors": args.actors,
        "decode_side": args.decode_side,
    }))


if __name__ == "__main__":
    main()
