"""Shared pieces of the model benchmarks: test images, the bench profile, the bare loop.

The "bare loop" is the limit every serving benchmark is held against (SPEC §8): the same model
(``models.families.load_group``, the very code the Serve deployment runs) called in a plain
``torch.inference_mode`` loop on pre-decoded images, at the registry's batch size, on the same
machine, with the same number of torch threads. It is measured two ways:

* ``predict``: the model's own preprocessing (resize / crop) + forward + result formatting, per
  batch, sequentially; what a notebook loop over decoded images does;
* ``forward``: forward + formatting only, on batches prepared beforehand; the pure tensor limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image, ImageEnhance, ImageOps

from core.registry import ModelGroup, ModelSpec, load_registry
from core.settings import Settings
from core.store import Store
from imaging import DecodedImage, decode_image
from models.base import Prepared
from models.tiny import ensure_local_profile

SAMPLES = Path(__file__).parents[1] / "serve_app" / "samples"
HOST = "127.0.0.1"


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
    """The model at ``spec``'s batch size in a bare inference loop (see the module docstring);
    given a serving group (``core.registry.ModelGroup``), its one runner answering every model
    of the group on each image: the limit of a shared backbone (one forward, a head per model)."""

    def __init__(self, spec: ModelSpec | ModelGroup, images: list[DecodedImage], threads: int) -> None:
        from models.families import load_group

        torch.set_num_threads(threads)
        group = spec if isinstance(spec, ModelGroup) else ModelGroup((spec,))
        self.runner = load_group(group)
        self.names = group.names
        self.batch = group.batching.max_batch_size
        self.batches = [[images[(b * self.batch + i) % len(images)] for i in range(self.batch)] for b in range(8)]
        self.prepared = [[self.runner.prepare(img) for img in group] for group in self.batches]

    def _answers(self, prepared: list[Prepared]) -> list[dict[str, Any]]:
        return [self.runner.answer(features, self.names) for features in self.runner.features(prepared)]

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
        return self._rate(
            lambda i: self._answers([self.runner.prepare(img) for img in self.batches[i % len(self.batches)]]), seconds)

    def forward_rate(self, seconds: float) -> float:
        """Images/s: forward + formatting only, on batches prepared beforehand."""
        return self._rate(lambda i: self._answers(self.prepared[i % len(self.prepared)]), seconds)


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


def _replica_deployment(command: str) -> str:
    """The deployment of a Serve replica's process title: ``ray::ServeReplica:<app>:<deployment>``,
    with ``.<method>`` appended while Ray runs a method."""
    return command.split("ServeReplica:", 1)[1].split()[0].split(":")[-1].split(".")[0]


def _label(pid: int, root: int, command: str) -> str:
    if pid == root:
        return "benchmark process (client, image host, receiver)"
    for marker, label in LABELS:
        if marker in command:
            if label is None:
                return _replica_deployment(command)
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


# -- the client's side of the stack: an image host, a webhook receiver, posting images ----------


class ImageHost:
    """A loopback image host on an event loop of its own (a daemon thread).

    ``url(i, delay_ms)`` answers the i-th of ``images`` (JPEG) after ``delay_ms``;
    ``missing_url(i, delay_ms)`` answers 404 after ``delay_ms``. The delay is in the path, so one
    host serves fast and slow images side by side, and, being asyncio, hundreds of delayed answers
    in flight cost no thread each (a threaded host would add its own contention to what it
    measures). HTTP/1.1 keep-alive, GET only."""

    def __init__(self, images: list[bytes], host: str = HOST) -> None:
        self.images = images
        self.host = host
        self.port = 0
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> ImageHost:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, self.host, 0, backlog=4096), self._loop
        ).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)

    def url(self, i: int, delay_ms: int = 0) -> str:
        return f"http://{self.host}:{self.port}/{delay_ms}/{i}.jpg"

    def missing_url(self, i: int, delay_ms: int = 0) -> str:
        return f"http://{self.host}:{self.port}/{delay_ms}/missing/{i}"

    def _answer(self, path: str) -> tuple[bytes, bytes]:
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[1].endswith(".jpg") and parts[1][:-4].isdigit():
            return b"200 OK", self.images[int(parts[1][:-4]) % len(self.images)]
        return b"404 Not Found", b""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests += 1
                delay = path.strip("/").split("/", 1)[0]
                if delay.isdigit() and int(delay):
                    await asyncio.sleep(int(delay) / 1000)
                status, body = self._answer(path)
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: image/jpeg\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        writer.close()


class Backlogged(ThreadingHTTPServer):
    """A threaded server with a real listen backlog: ``socketserver``'s default of 5 overflows
    when the notifier opens its pool's connections at once, and a connection the kernel then
    leaves out of the accept queue waits out handshake retransmits (1 s, doubling) that can pass
    the webhook timeout: a figure of this receiver, not of Sightwire."""

    request_queue_size = 4096


class Receiver:
    """A loopback webhook endpoint: when each resource's first webhook arrived, its last
    status, and the last ``counts`` of each group (how far a group's images have got)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.statuses: dict[str, str] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                now = time.perf_counter()
                data = json.loads(body)["data"]
                with outer.lock:
                    outer.arrived.setdefault(data["id"], now)
                    outer.statuses[data["id"]] = data["status"]
                    if "counts" in data:
                        outer.counts[data["id"]] = data["counts"]
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = Backlogged((HOST, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/hook"

    def missing(self, ids: list[str]) -> int:
        return sum(i not in self.arrived for i in ids)

    async def wait(self, ids: list[str], timeout_s: float, *, strict: bool = True) -> int:
        """Wait until a webhook arrived for every id; returns how many are still missing after
        ``timeout_s`` (``strict``: raise instead)."""
        deadline = time.perf_counter() + timeout_s
        while missing := self.missing(ids):
            if time.perf_counter() > deadline:
                if strict:
                    raise RuntimeError(f"{missing} of {len(ids)} webhooks missing after {timeout_s}s")
                return missing
            await asyncio.sleep(0.02)
        return 0

    def finished(self, group_ids: list[str]) -> int:
        """Images of these groups done so far, by their last webhook (progress is throttled)."""
        with self.lock:
            return sum(self.counts[g]["total"] - self.counts[g]["pending"] for g in group_ids if g in self.counts)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post_image(client: httpx.AsyncClient, key: str, url: str, models: list[str], hook: str) -> tuple[str, float]:
    """``POST /v1/images``; the image id and when the request was sent (``perf_counter``)."""
    sent = time.perf_counter()
    response = await client.post("/v1/images", json={"url": url, "models": models, "webhookUrl": hook},
                                 headers=bearer(key))
    response.raise_for_status()
    return response.json()["id"], sent


async def throughput(base: str, key: str, urls: list[str], receiver: Receiver, models: list[str],
                     concurrency: int) -> float:
    """Images/s: every url posted, ``concurrency`` POSTs in flight, from the first POST to the
    last webhook; every image must end ``complete``."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async def one(url: str) -> str:
            async with limit:
                return (await post_image(client, key, url, models, receiver.url))[0]

        started = time.perf_counter()
        ids = await asyncio.gather(*(one(url) for url in urls))
        await receiver.wait(ids, timeout_s=600)
    elapsed = max(receiver.arrived[i] for i in ids) - started
    failed = [receiver.statuses[i] for i in ids if receiver.statuses[i] != "complete"]
    if failed:
        raise RuntimeError(f"{len(failed)} images did not complete: {set(failed)}")
    return len(urls) / elapsed


async def open_loop(base: str, key: str, url: Callable[[int], str], receiver: Receiver, models: list[str],
                    rate: float, seconds: float) -> list[tuple[str, float]]:
    """Images posted at ``rate`` per second for ``seconds``, whatever the answers take (open
    loop); each image's id and send time, once every POST has been answered."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        tasks = []
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(post_image(client, key, url(i), models, receiver.url)))
        return list(await asyncio.gather(*tasks))


# -- the stack's processes -----------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def replica_pids(deployment: str) -> list[int]:
    """The processes of a Serve deployment's replicas, found by the title Ray gives them
    (``ray::ServeReplica:<app>:<deployment>``)."""
    _, info = process_table()
    return sorted(pid for pid, (_, command) in info.items()
                  if "ServeReplica:" in command and _replica_deployment(command) == deployment)


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}


def run_child(module: str, args: list[str], timeout_s: float = 1800) -> dict[str, Any]:
    """``python -m module args`` in a fresh process (a Ray of its own, so a Serve mode read from
    the environment at start-up can differ between runs); its last output line, a JSON object."""
    done = subprocess.run([sys.executable, "-m", module, *args], env=_child_env(), capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


READY = "ready"  # what a child of ``side_by_side`` prints once set up; it then waits for a line on stdin


def side_by_side(module: str, args: list[str], count: int, timeout_s: float = 900) -> list[dict[str, Any]]:
    """``count`` copies of ``python -m module args`` measuring at the same moment (one bare
    worker per core; ``{worker}`` in an argument becomes the child's index): each sets up, prints
    ``READY`` and waits; once all are ready, all are told to go. Their last output lines, JSON
    objects."""
    with contextlib.ExitStack() as cleanup:
        children = []
        for index in range(count):
            errors = cleanup.enter_context(tempfile.TemporaryFile(mode="w+"))
            child = cleanup.enter_context(subprocess.Popen(
                [sys.executable, "-m", module, *(a.replace("{worker}", str(index)) for a in args)],
                env=_child_env(), text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors))
            cleanup.callback(lambda c=child: c.poll() is None and c.kill())  # runs before its Popen's exit
            children.append((child, errors))
        for child, _ in children:
            assert child.stdout is not None
            while (line := child.stdout.readline()) and line.strip() != READY:
                pass
        for child, _ in children:
            assert child.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died setting up: its exit code says why
                child.stdin.write("go\n")
                child.stdin.flush()
        outputs = [child.communicate(timeout=timeout_s)[0] for child, _ in children]
        for (child, errors), output in zip(children, outputs, strict=True):
            if child.returncode:
                errors.seek(0)
                raise RuntimeError(f"{module} {' '.join(args)} failed ({child.returncode}):\n{output[-3000:]}"
                                   f"\n{errors.read()[-3000:]}")
        return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


def interleaved(variants: list[str], repeats: int, run: Callable[[str], dict[str, Any]]) -> dict[str, list[dict]]:
    """``run(variant)`` for every variant in each of ``repeats`` rounds, the order reversed every
    other round (A B, B A, A B...), so the machine's drift meets every variant alike; the results
    per variant, in round order."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for round_ in range(repeats):
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            results[variant].append(run(variant))
            print(f"round {round_ + 1} {variant}: {json.dumps(results[variant][-1].get('round', {}))}", flush=True)
    return results


def spread_of(results: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """``spread`` of one figure over repeated runs' results."""
    return spread([float(r[key]) for r in results])


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max of repeated measurements, rounded for printing."""
    return {"median": round(median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2),
            "runs": [round(v, 2) for v in values]}
