"""Shared pieces of the model benchmarks: test images, the bench profile, the bare loop.

The "bare loop" is the limit every serving benchmark is held against (SPEC §8): the same model
(``models.families.load_runner``, the very code the Serve deployment runs) called in a plain
``torch.inference_mode`` loop on pre-decoded images, at the registry's batch size, on the same
machine, with the same number of torch threads. It is measured two ways:

* ``predict``: the model's own preprocessing (resize / crop) + forward + result formatting, per
  batch, sequentially; what a notebook loop over decoded images does;
* ``forward``: forward + formatting only, on batches prepared beforehand; the pure tensor limit.
"""

from __future__ import annotations

import asyncio
import io
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from PIL import Image, ImageEnhance, ImageOps

from core.registry import ModelSpec, load_registry
from core.settings import Settings
from core.store import Store
from imaging import DecodedImage, decode_image
from models.tiny import ensure_local_profile

SAMPLES = Path(__file__).parents[1] / "serve_app" / "samples"


def create_api_key(settings: Settings, name: str) -> str:
    """A new API key in the stack's store (from synchronous benchmark code)."""

    async def create() -> str:
        store = Store.from_settings(settings)
        try:
            return await store.accounts.create_api_key(name)
        finally:
            await store.close()

    return asyncio.run(create())


class NotFound(BaseHTTPRequestHandler):
    """An image host whose every image is missing: processing after acceptance stays cheap."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def start_not_found_host(host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """``NotFound`` on a free port of ``host``, serving on a daemon thread."""
    server = ThreadingHTTPServer((host, 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0]
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), {gpu}, load avg {load:.1f} at start"


def jpeg_variants(count: int) -> list[bytes]:
    """``count`` distinct JPEGs (quality 90) made from the two sample photos (640x480, 800x533)."""
    photos = [Image.open(SAMPLES / name).convert("RGB") for name in ("kitchen.jpg", "exterior.jpg")]
    out = []
    for i in range(count):
        image = photos[i % 2]
        if (i // 2) % 2:
            image = ImageOps.mirror(image)
        image = ImageEnhance.Brightness(image).enhance(0.85 + 0.3 * ((i * 7) % 11) / 10)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def decoded_images(count: int) -> list[DecodedImage]:
    settings = Settings()
    return [decode_image(data, settings.max_image_pixels, settings.max_image_side) for data in jpeg_variants(count)]


def bench_registry(models_dir: Path | None = None) -> dict[str, ModelSpec]:
    """The ``bench`` profile's specs, built locally on first use (random weights)."""
    directory = Path(models_dir or Settings.from_env().models_dir).expanduser()
    ensure_local_profile(directory, "bench")
    return load_registry("bench", directory).models


class BareLoop:
    """The model at ``spec``'s batch size in a bare inference loop (see the module docstring)."""

    def __init__(self, spec: ModelSpec, images: list[DecodedImage], threads: int) -> None:
        from models.families import load_runner

        torch.set_num_threads(threads)
        self.runner = load_runner(spec)
        self.batch = spec.batching.max_batch_size
        self.batches = [[images[(b * self.batch + i) % len(images)] for i in range(self.batch)] for b in range(8)]
        self.prepared = [[self.runner.prepare(img) for img in group] for group in self.batches]

    def _rate(self, step: Callable[[int], object], seconds: float) -> float:
        with torch.inference_mode():
            step(0)  # warm-up
            done, started, i = 0, time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                step(i)
                done += self.batch
                i += 1
            return done / (time.perf_counter() - started)

    def predict_rate(self, seconds: float) -> float:
        """Images/s: preprocessing + forward + formatting, batch after batch."""
        return self._rate(lambda i: self.runner.predict(self.batches[i % len(self.batches)]), seconds)

    def forward_rate(self, seconds: float) -> float:
        """Images/s: forward + formatting only, on batches prepared beforehand."""
        return self._rate(lambda i: self.runner.run(self.prepared[i % len(self.prepared)]), seconds)


def process_table() -> tuple[dict[int, int], dict[int, tuple[float, str]]]:
    """Every process on the machine: its parent, and (CPU seconds used so far, command line)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    info: dict[int, tuple[float, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(proc.name)] = int(fields[1])
        info[int(proc.name)] = ((int(fields[11]) + int(fields[12])) / tick, command)
    return parents, info


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """``root`` and every process under it."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


LABELS = (
    ("ServeReplica", None), ("ProxyActor", "serve proxy"), ("ServeController", "serve controller"),
    ("Notifier", "notifier"), ("redis-server", "redis"), ("raylet", "raylet (object store)"),
    ("gcs_server", "gcs"),
)


def _label(pid: int, root: int, command: str) -> str:
    if pid == root:
        return "benchmark process (client, image host, receiver)"
    for marker, label in LABELS:
        if marker in command:
            if label is None:  # ray::ServeReplica:<app>:<deployment>
                return command.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
            return label
    return "other ray processes"


def cpu_by_process(root: int | None = None) -> dict[str, float]:
    """CPU seconds used so far by ``root`` (default: this process) and each process under it,
    summed by role: each Serve deployment, the proxy, Redis, the raylet, the notifier..."""
    root = os.getpid() if root is None else root
    parents, info = process_table()
    table: dict[str, float] = {}
    for pid in descendants(root, parents):
        if pid in info:
            label = _label(pid, root, info[pid][1])
            table[label] = table.get(label, 0.0) + info[pid][0]
    return table


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0.005}


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds used so far by ``root`` (default: this process) and every
    process under it: with a local Ray, that is the GCS, the raylet (object store), and every
    worker and Serve replica. Work divided by this is immune to other load on the machine."""
    root = os.getpid() if root is None else root
    parents, info = process_table()
    return sum(info[pid][0] for pid in descendants(root, parents) if pid in info)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]
