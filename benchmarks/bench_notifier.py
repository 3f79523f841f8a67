"""Webhook delivery throughput and latency (SPEC §8: >= 85 % of a bare client, p99 <= 20 ms).

1. **Limits**: a bare ``httpx.AsyncClient``, and a bare httpcore connection pool (the HTTP engine
   the notifier itself sends with), post pre-signed bodies to a fast local receiver at the
   notifier's per-endpoint concurrency (the limit it holds itself to), as fast as they can.
2. **Notifier**: the same number of deliveries, queued in the Redis outbox beforehand, sent by the
   notifier's ``DeliveryLoop`` (claim with lease, sign, POST, record the attempt and the breaker
   in Redis) at the same concurrency; timed until every delivery is *recorded* delivered.
   ``ratio`` = notifier deliveries/s ÷ the faster limit's posts/s (the strictest; median of the
   repeats' own ratios, the spread printed); the ratio to each limit is printed too.
3. **Latency**: a separate process queues deliveries the way the processor does (one
   transaction each) at half of the notifier's measured peak; the receiver measures enqueue →
   receipt (the enqueue time travels in the payload).

The receiver is a raw asyncio (uvloop) HTTP/1.1 server in its own process; Redis is a private
``redis-server`` with AOF on (as deployed). The notifier runs as shipped: every setting at its
default, its ``DeliveryLoop`` in this process on the default asyncio event loop, as in the
notifier actor, with a local Ray started so that its metrics are recorded through Ray's metrics
API as in the actor (without the actor's own call layer). Last line: one JSON object.

    .venv/bin/python benchmarks/bench_notifier.py [--n 3000] [--repeats 5] [--latency-s 5] [--latency-rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from core.events import Events
from core.keys import org_hash
from core.schemas import EventType, WebhookPayload, utcnow
from core.settings import Settings
from core.store import Store
from core.tokens import new_id, new_webhook_secret
from notifier.loop import DeliveryLoop
from notifier.signing import signature_headers
from serve_app.local import RedisServer, free_port

RATIO_TARGET = 0.85
P99_TARGET_MS = 20.0
ORG = "org_bench"
EVENTS = Events()  # the default payload cap, as the store would apply it

# -- the receiver (own process) ----------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


def run_receiver(port: int, ready: Any) -> None:
    import uvloop

    state: dict[str, Any] = {"count": 0, "latencies": []}

    class Receiver(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = bytearray()

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = 0
                for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if len(self.buffer) < end + 4 + length:
                    return
                head = bytes(self.buffer[:end])
                body = bytes(self.buffer[end + 4:end + 4 + length])
                del self.buffer[:end + 4 + length]
                self.handle(head, body)

        def handle(self, head: bytes, body: bytes) -> None:
            now = time.time()
            path = head.split(b" ", 2)[1]
            if path == b"/stats":
                payload = json.dumps(state).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
                return
            if path == b"/reset":
                state["count"], state["latencies"] = 0, []
                self.transport.write(OK)
                return
            state["count"] += 1
            at = body.find(b'"enq":')
            if at >= 0:
                stop = at + 6
                while body[stop:stop + 1] not in (b",", b"}", b""):
                    stop += 1
                state["latencies"].append(now - float(body[at + 6:stop]))
            self.transport.write(OK)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", port, backlog=1024)
        ready.set()
        await server.serve_forever()

    uvloop.run(main())


async def receiver_stats(port: int, reset: bool = False) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/{'reset' if reset else 'stats'}", timeout=30)
        return {} if reset else response.json()


async def until(check: Any, step: float = 0.005) -> None:
    while True:
        if check():
            return
        await asyncio.sleep(step)


# -- payloads ---------------------------------------------------------------------------------


def data_for(i: int, payload_bytes: int, enqueued: float | None = None) -> dict[str, Any]:
    """A record-like payload of about ``payload_bytes`` (detections are most of a real one)."""
    data: dict[str, Any] = {"id": new_id("img", org_hash(ORG)), "object": "image", "status": "complete",
                            "sequence": 1, "n": i, "detections": "x" * max(0, payload_bytes - 160)}
    if enqueued is not None:
        data["enq"] = enqueued
    return data


async def queue(store: Store, url: str, n: int, payload_bytes: int, batch: int = 200) -> None:
    for start in range(0, n, batch):
        async with store.redis.pipeline(transaction=True) as pipe:
            for i in range(start, min(n, start + batch)):
                data = data_for(i, payload_bytes)
                store.outbox.add(pipe, EVENTS.announcement(ORG, url, EventType.IMAGE_COMPLETED, data["id"], 1, data))
            await pipe.execute()


@dataclass
class Run:
    per_s: float  # wall clock
    cpu_s: float  # CPU time of this process per request (the sender's own cost)
    redis_cpu_s: float = 0.0  # CPU time of redis-server per request


REDIS_PID = 0


def redis_cpu() -> float:
    """User + system CPU seconds of the benchmark's redis-server so far."""
    fields = Path(f"/proc/{REDIS_PID}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the three measurements -------------------------------------------------------------------


async def bare(url: str, n: int, concurrency: int, payload_bytes: int, secret: str) -> Run:
    """Posts/s of a bare httpx client with pre-signed bodies at ``concurrency``."""
    now = utcnow()
    requests = []
    for i in range(n):
        body = WebhookPayload(type=EventType.IMAGE_COMPLETED, timestamp=now, data=data_for(i, payload_bytes)).to_json()
        headers = signature_headers([secret], new_id("msg"), int(now.timestamp()), body)
        requests.append((body, headers))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        pending = iter(requests)

        async def worker() -> None:
            for body, headers in pending:
                response = await client.post(url, content=body, headers=headers)
                response.raise_for_status()

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Run(n / (time.perf_counter() - started), (time.process_time() - cpu) / n)


async def bare_engine(url: str, n: int, concurrency: int, payload_bytes: int, secret: str) -> Run:
    """Posts/s of the notifier's own HTTP engine, bare: an httpcore pool (no client layers, no
    URL policy), pre-signed bodies, ``concurrency`` workers. The strictest limit."""
    now = utcnow()
    target = httpcore.URL(url)
    requests = []
    for i in range(n):
        body = WebhookPayload(type=EventType.IMAGE_COMPLETED, timestamp=now, data=data_for(i, payload_bytes)).to_json()
        signed = signature_headers([secret], new_id("msg"), int(now.timestamp()), body)
        headers = [(b"host", target.host + b":" + str(target.port).encode()),
                   (b"content-length", str(len(body)).encode()),
                   *((k.encode(), v.encode()) for k, v in signed.items())]
        requests.append((body.encode(), headers))
    async with httpcore.AsyncConnectionPool(max_connections=concurrency) as pool:
        pending = iter(requests)

        async def worker() -> None:
            for body, headers in pending:
                response = await pool.request(b"POST", target, headers=headers, content=body)
                assert response.status == 200

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Run(n / (time.perf_counter() - started), (time.process_time() - cpu) / n)


async def notifier(settings: Settings, url: str, n: int, payload_bytes: int) -> Run:
    """Deliveries/s of the delivery loop, until every delivery is recorded delivered."""
    prefix = settings.model_copy(update={"key_prefix": new_id("bench")})
    store = Store.from_settings(prefix)
    await store.accounts.webhook_secrets(ORG)
    await queue(store, url, n, payload_bytes)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    await receiver_stats(port, reset=True)
    loop = DeliveryLoop(prefix)
    started, cpu, rcpu = time.perf_counter(), time.process_time(), redis_cpu()
    loop.start()
    await until(lambda: loop.metrics.counts["delivered"] >= n)
    done, cpu, rcpu = time.perf_counter() - started, time.process_time() - cpu, redis_cpu() - rcpu
    assert await store.outbox.next_due_at() is None, "outbox not drained"
    got = (await receiver_stats(port))["count"]
    assert got >= n, f"receiver saw {got} of {n}"
    await loop.stop()
    await store.close()
    return Run(n / done, cpu / n, rcpu / n)


def run_enqueuer(settings_json: str, url: str, rate: float, seconds: float, payload_bytes: int, out: Any) -> None:
    """The processor's side: one transaction per delivery, at ``rate`` per second."""

    async def main() -> None:
        store = Store.from_settings(Settings.model_validate_json(settings_json))
        n = int(rate * seconds)
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with store.redis.pipeline(transaction=True) as pipe:
                data = data_for(i, payload_bytes, enqueued=time.time())
                store.outbox.add(pipe, EVENTS.announcement(ORG, url, EventType.IMAGE_COMPLETED, data["id"], 1, data))
                await pipe.execute()
        out.put((n, n / (time.perf_counter() - started), (time.process_time() - cpu) / n))
        await store.close()

    asyncio.run(main())


async def latency(settings: Settings, url: str, rate: float, seconds: float, payload_bytes: int) -> dict[str, Any]:
    prefix = settings.model_copy(update={"key_prefix": new_id("bench")})
    store = Store.from_settings(prefix)
    await store.accounts.webhook_secrets(ORG)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    loop = DeliveryLoop(prefix)
    loop.start()
    await asyncio.sleep(0.5)
    await receiver_stats(port, reset=True)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    enqueuer = ctx.Process(target=run_enqueuer, args=(prefix.model_dump_json(), url, rate, seconds, payload_bytes, out))
    enqueuer.start()
    cpu, rcpu = time.process_time(), redis_cpu()
    n, offered, enqueue_cpu = await asyncio.to_thread(out.get)
    await asyncio.to_thread(enqueuer.join)
    await until(lambda: loop.metrics.counts["delivered"] >= n)
    cpu, rcpu = time.process_time() - cpu, redis_cpu() - rcpu
    stats = await receiver_stats(port)
    await loop.stop()
    await store.close()
    lat = sorted(x * 1000 for x in stats["latencies"])
    return {
        "n": n, "offered_per_s": round(offered, 1),
        "p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "max_ms": round(lat[-1], 2),
        "notifier_cpu_us": round(cpu / n * 1e6, 1), "redis_cpu_us": round(rcpu / n * 1e6, 1),
        "enqueuer_cpu_us": round(enqueue_cpu * 1e6, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="deliveries per throughput run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=None, help="default: the endpoint_concurrency setting")
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--latency-s", type=float, default=5.0)
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="deliveries/s for the latency run (default: half of the measured peak)")
    args = parser.parse_args()

    concurrency = args.concurrency or Settings().endpoint_concurrency
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    redis = RedisServer().start()
    global REDIS_PID
    REDIS_PID = redis._process.pid  # type: ignore[union-attr]
    port = free_port()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    receiver = ctx.Process(target=run_receiver, args=(port, ready), daemon=True)
    receiver.start()
    ready.wait(10)
    url = f"http://127.0.0.1:{port}/hook"
    settings = Settings(redis_url=redis.url, allow_private_cidrs="127.0.0.0/8", endpoint_concurrency=concurrency)
    try:
        await bare(url, min(args.n, 500), concurrency, args.payload_bytes, new_webhook_secret())  # warm up
        bares, engines, notifiers = [], [], []
        for _ in range(args.repeats):  # interleaved, so that each trio meets the same machine load
            bares.append(await bare(url, args.n, concurrency, args.payload_bytes, new_webhook_secret()))
            engines.append(await bare_engine(url, args.n, concurrency, args.payload_bytes, new_webhook_secret()))
            notifiers.append(await notifier(settings, url, args.n, args.payload_bytes))
            b, e, d = bares[-1], engines[-1], notifiers[-1]
            print(f"httpx client {b.per_s:6.0f}/s ({b.cpu_s * 1e6:4.0f} us CPU)   "
                  f"httpcore pool {e.per_s:6.0f}/s ({e.cpu_s * 1e6:4.0f} us)   "
                  f"notifier {d.per_s:6.0f}/s ({d.cpu_s * 1e6:4.0f} us + redis {d.redis_cpu_s * 1e6:3.0f} us)   "
                  f"ratios {d.per_s / b.per_s:.2f} / {d.per_s / e.per_s:.2f}", flush=True)
        ratios = [d.per_s / b.per_s for b, d in zip(bares, notifiers, strict=True)]
        engine_ratios = [d.per_s / e.per_s for e, d in zip(engines, notifiers, strict=True)]
        ratio, engine_ratio = statistics.median(ratios), statistics.median(engine_ratios)
        headline = min(ratio, engine_ratio)
        cpu_ratio = statistics.median(b.cpu_s / d.cpu_s for b, d in zip(bares, notifiers, strict=True))
        engine_cpu_ratio = statistics.median(e.cpu_s / d.cpu_s for e, d in zip(engines, notifiers, strict=True))
        bare_rate = statistics.median(r.per_s for r in bares)
        engine_rate = statistics.median(r.per_s for r in engines)
        done_rate = statistics.median(r.per_s for r in notifiers)
        lat = await latency(settings, url, args.latency_rate or done_rate / 2, args.latency_s, args.payload_bytes)
        print(f"ratio {headline:.2f} (target {RATIO_TARGET}): {ratio:.2f} vs the httpx client "
              f"({min(ratios):.2f}-{max(ratios):.2f}), {engine_ratio:.2f} vs a bare httpcore pool "
              f"({min(engine_ratios):.2f}-{max(engine_ratios):.2f}); CPU-time ratios {cpu_ratio:.2f} / "
              f"{engine_cpu_ratio:.2f}; "
              f"at {lat['offered_per_s']}/s (half of peak): "
              f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms (target {P99_TARGET_MS}), max {lat['max_ms']} ms")
        print(json.dumps({
            "bench": "notifier", "n": args.n, "repeats": args.repeats, "concurrency": concurrency,
            "payload_bytes": args.payload_bytes,
            "bare_per_s": round(bare_rate, 1), "bare_engine_per_s": round(engine_rate, 1),
            "notifier_per_s": round(done_rate, 1),
            "ratio": round(headline, 3), "target": RATIO_TARGET, "ratio_vs_httpx": round(ratio, 3),
            "ratio_vs_engine": round(engine_ratio, 3), "ratios_vs_httpx": [round(r, 3) for r in ratios],
            "ratios_vs_engine": [round(r, 3) for r in engine_ratios],
            "cpu_ratio": round(cpu_ratio, 3), "cpu_ratio_vs_engine": round(engine_cpu_ratio, 3),
            "bare_cpu_us": round(statistics.median(r.cpu_s for r in bares) * 1e6, 1),
            "bare_engine_cpu_us": round(statistics.median(r.cpu_s for r in engines) * 1e6, 1),
            "notifier_cpu_us": round(statistics.median(r.cpu_s for r in notifiers) * 1e6, 1),
            "notifier_redis_cpu_us": round(statistics.median(r.redis_cpu_s for r in notifiers) * 1e6, 1),
            "load_avg_1m": os.getloadavg()[0],
            "latency_load_per_s": lat["offered_per_s"], "latency_n": lat["n"],
            "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "max_ms": lat["max_ms"], "p99_target_ms": P99_TARGET_MS,
            "latency_cpu_us": {k: lat[k] for k in ("notifier_cpu_us", "redis_cpu_us", "enqueuer_cpu_us")},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        }))
    finally:
        receiver.terminate()
        redis.cleanup()
        ray.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
