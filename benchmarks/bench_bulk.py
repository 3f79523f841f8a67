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

The machine may be shared, so the benchmark also accounts for CPU, from /proc: the machine's busy
CPU seconds per image from the first to the last result, less what other users' processes took
(their share is printed), against the bare loop's per image; and a breakdown by process of its
own that are still alive at the end (Ray's idle workers may have exited by then). ``cpu_cost_ratio`` (loop CPU per
image / pipeline CPU per image) is what ``ratio`` would be on a machine to itself, where both
keep every core busy; it is reported beside the measured ratio, never instead of it.

Model: the ``bench`` profile's ``object_detection`` (DETR, mid-size shapes, random weights:
tens of ms per image on a laptop CPU), built locally on first use.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_bulk.py [--images 2048] [--stats]

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

from benchmarks.common import descendants, process_table
from core.registry import Autoscaling, Resources, decode_min_side, load_registry
from core.settings import Settings
from imaging import decode_image
from models.families import load_runner
from models.tiny import ensure_local_profile
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

        class Server(ThreadingHTTPServer):
            # socketserver's default backlog of 5 drops connections beyond it when many
            # downloads start at once, and each dropped SYN costs a 1 s retransmit: a real image
            # host (a CDN, object storage) does not throttle like that.
            request_queue_size = 1024
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
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
    side = decode_min_side([spec])  # decoded as the pipeline decodes them
    decoded = [decode_image(data, settings.max_image_pixels, settings.max_image_side, side) for data in images]
    prepared = [runner.prepare(image) for image in decoded]
    size = spec.batching.max_batch_size
    batches = [prepared[i:i + size] for i in range(0, len(prepared), size)]
    threads = torch.get_num_threads()
    with torch.inference_mode():
        for batch in batches[:2]:  # warm-up
            runner.run(batch)
        runs, cpu = [], []
        for _ in range(repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            for batch in batches:
                runner.run(batch)
            runs.append(len(prepared) / (time.perf_counter() - started))
            cpu.append(1000 * (time.process_time() - cpu_started) / len(prepared))
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
        "cpu_ms_per_image": min(cpu),
        "per_core_images_per_s": max(per_core), "per_core_runs": per_core,
    }


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:8]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values) - idle) / tick, sum(values) / tick


Snapshot = tuple[dict[int, int], dict[int, tuple[float, str]]]  # benchmarks.common.process_table()


def process_name(pid: int, command: str) -> str:
    """A short name to sum CPU by: the Ray worker's title, else the program's file name."""
    if pid == os.getpid():
        return "benchmark driver (Ray Data executor, image server)"
    first = command.split(" ", 1)[0]
    return (first if first.startswith("ray::") else Path(first).name or "?").split(".")[0][:60]


def cpu_between(before: Snapshot, after: Snapshot) -> tuple[dict[str, float], float]:
    """CPU seconds per process name of this benchmark's own processes (it and its local Ray:
    GCS, raylet, workers), and of everyone else's."""
    parents, info = after
    own = set(descendants(os.getpid(), parents))
    earlier = before[1]
    used: dict[str, float] = {}
    others = 0.0
    for pid, (seconds, command) in info.items():
        spent = seconds - (earlier[pid][0] if pid in earlier else 0.0)
        if pid in own:
            name = process_name(pid, command)
            used[name] = used.get(name, 0.0) + spent
        else:
            others += spent
    return dict(sorted(used.items(), key=lambda item: -item[1])), others


def pipeline(
    spec, urls: list[str], settings: Settings, server: ImageServer, show_stats: bool
) -> dict[str, float]:
    """Images/s of ``bulk``'s pipeline over ``urls`` once its model is loaded, and its start-up.

    The model pool waits for its actor before any batch is dispatched, so the first download
    marks the end of start-up; from there to the last result, every image is fetched, decoded,
    prepared and run."""
    options = PipelineOptions(wait_for_min_actors_s=600)
    started = time.monotonic()
    stream, _ = bulk.stream(urls, [spec], settings, progress=False, options=options)
    last = started
    statuses: dict[str, int] = {}
    cpu_at_first: Snapshot | None = None
    arrivals: list[tuple[float, int]] = []
    for table in stream.iter_batches(batch_size=None, batch_format="pyarrow"):
        last = time.monotonic()
        arrivals.append((last, table.num_rows))
        if cpu_at_first is None:
            cpu_at_first, machine_at_first = process_table(), machine_cpu()
        for status in table["status"].to_pylist():
            statuses[status] = statuses.get(status, 0) + 1
    if cpu_at_first is None:
        raise RuntimeError("the pipeline returned no rows")
    first_fetch = min(server.fetched_at)
    first_result, first_rows = arrivals[0]
    after_first = max(1, len(urls) - first_rows)  # rows after the fill (the whole run, if one batch)
    busy, total = (b - a for a, b in zip(machine_at_first, machine_cpu(), strict=True))
    used, others = cpu_between(cpu_at_first, process_table())
    if show_stats:
        print(stream.stats())
    print(f"CPU seconds from the first to the last result batch: machine busy {busy:.1f} of {total:.1f}; "
          f"other users' processes {others:.1f}; this benchmark's processes still alive at the end:")
    for name, seconds in used.items():
        if seconds >= 0.05:
            print(f"  {seconds:7.2f}  {name}")
    return {
        "images_per_s": len(urls) / (last - first_fetch),
        "startup_s": first_fetch - started,
        "end_to_end_images_per_s": len(urls) / (last - started),
        "window_s": last - first_fetch,
        "fill_s": first_result - first_fetch,
        "steady_images_per_s": after_first / max(last - first_result, 1e-9),
        # Machine-wide busy time less other users': Ray's idle workers may exit before the last
        # batch, and an exited process's CPU is no longer in /proc.
        "cpu_ms_per_image": 1000 * (busy - others) / after_first,
        "others_cpu_share": others / total,
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="images through the pipeline")
    parser.add_argument("--limit-images", type=int, default=512, help="images for the bare loops (a rate)")
    parser.add_argument("--size", default="640x480", help="image width x height")
    parser.add_argument("--repeats", type=int, default=3, help="bare-loop repeats (best is the limit)")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1,
                        help="model actors (default: one per core); each gets cores/actors CPUs and as many "
                             "torch threads")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's per-stage timing")
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

    limit = bare_loop(spec, list(images.values())[:args.limit_images], settings, args.repeats)
    print(f"limit (bare inference_mode loop, prepared images, {limit['threads']} torch threads): "
          f"{limit['images_per_s']:.1f} images/s (runs {', '.join(f'{r:.1f}' for r in limit['runs'])}); "
          f"with per-image prepare: {limit['with_prepare_images_per_s']:.1f} images/s")
    print(f"stricter limit (one single-threaded loop per core, side by side): "
          f"{limit['per_core_images_per_s']:.1f} images/s "
          f"(runs {', '.join(f'{r:.1f}' for r in limit['per_core_runs'])})")

    server = ImageServer(images)
    # One Ray CPU per core for the model actor, one more for the fetch/decode actors.
    bulk.ensure_ray(num_cpus=cores + 1)
    try:
        measured = pipeline(spec, [server.url(p) for p in images], settings, server, args.stats)
    finally:
        server.stop()
        ray.shutdown()
    assert measured["statuses"] == {"complete": args.images}, measured["statuses"]
    ratio = measured["images_per_s"] / limit["images_per_s"]
    strict = measured["images_per_s"] / limit["per_core_images_per_s"]
    cpu_ratio = limit["cpu_ms_per_image"] / measured["cpu_ms_per_image"]
    print(f"pipeline (fetch over HTTP + decode + inference, first download to last result): "
          f"{measured['images_per_s']:.1f} images/s over {measured['window_s']:.1f} s "
          f"(first result after {measured['fill_s']:.1f} s; from there on {measured['steady_images_per_s']:.1f} "
          f"images/s)")
    print(f"pipeline start-up (plan, actor, model load): {measured['startup_s']:.1f} s; "
          f"end to end {measured['end_to_end_images_per_s']:.1f} images/s")
    print(f"CPU per image: bare loop {limit['cpu_ms_per_image']:.1f} ms, pipeline (machine busy less other users) "
          f"{measured['cpu_ms_per_image']:.1f} ms; other users took {100 * measured['others_cpu_share']:.0f} % "
          f"of the machine while it ran")
    print(f"ratio = {ratio:.3f} (target >= {TARGET}); against one loop per core: {strict:.3f}; "
          f"CPU-cost ratio {cpu_ratio:.3f}")
    print(json.dumps({
        "benchmark": "bulk_pipeline",
        "ratio": round(ratio, 4),
        "target": TARGET,
        "ratio_vs_loop_per_core": round(strict, 4),
        "cpu_cost_ratio": round(cpu_ratio, 4),
        "limit_cpu_ms_per_image": round(limit["cpu_ms_per_image"], 2),
        "pipeline_cpu_ms_per_image": round(measured["cpu_ms_per_image"], 2),
        "others_cpu_share": round(measured["others_cpu_share"], 3),
        "pipeline_images_per_s": round(measured["images_per_s"], 2),
        "limit_images_per_s": round(limit["images_per_s"], 2),
        "limit_with_prepare_images_per_s": round(limit["with_prepare_images_per_s"], 2),
        "limit_loop_per_core_images_per_s": round(limit["per_core_images_per_s"], 2),
        "startup_s": round(measured["startup_s"], 2),
        "end_to_end_images_per_s": round(measured["end_to_end_images_per_s"], 2),
        "steady_images_per_s": round(measured["steady_images_per_s"], 2),
        "images": args.images,
        "image_size": args.size,
        "batch_size": spec.batching.max_batch_size,
        "cpus": cores,
        "actors": args.actors,
        "decode_min_side": decode_min_side([spec]),
    }))


if __name__ == "__main__":
    main()
