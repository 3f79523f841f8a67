"""Redis commands and Redis CPU per image (issue 11): the store must not be the ceiling.

Starts the whole stack (``tiny`` models, real Ray, a private redis-server with AOF on, as
``sightwire serve`` does), a loopback image host and a loopback webhook receiver, then runs three
flows, every image asking for the four models with one webhook:

* ``single``: ``--singles`` images, each its own ``POST /v1/images`` (8 in flight);
* ``group``: one online group of ``--group`` images (below the bulk threshold);
* ``bulk``: one bulk group (``--bulk`` images, the bulk threshold set to that size: a Ray Data run).

Each flow is measured on the private redis-server alone: ``CONFIG RESETSTAT``, then the flow until
its last webhook, then ``INFO commandstats`` (calls per command) and ``used_cpu_sys +
used_cpu_user``. Idle polling (the processor, the notifier, the reclaimer with nothing to do) is
measured the same way over ``--idle-seconds`` with no load, and its rate times the flow's
duration is subtracted. The benchmark's own ``INFO`` / ``CONFIG`` calls are left out.
Targets: <= 20 commands and <= 0.4 ms Redis CPU per image. Last line: one JSON object.

    PYTHONPATH=. .venv/bin/python -m benchmarks.bench_store [--singles 50] [--group 100] [--bulk 150] [--top 8]

A flow given 0 images is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from benchmarks.common import HOST, ImageHost, Receiver, bearer, create_api_key, jpeg_variants, machine, post_image
from core.settings import Settings
from serve_app.local import free_port
from serve_app.stack import LocalStack

MODELS = ["object_detection", "room_classification", "condition_score", "quality_score"]
TARGET_COMMANDS = 20
TARGET_CPU_MS = 0.4
OWN = {"info", "config|resetstat", "config"}  # the benchmark's own calls
TERMINAL = {"complete", "partial", "failed", "canceled"}


@dataclass
class Sample:
    """What the private redis-server did over ``seconds``: calls per command and CPU seconds."""

    calls: dict[str, int]
    usec: dict[str, int]
    cpu_s: float
    seconds: float

    def minus(self, idle: Sample) -> Sample:
        """This sample less the idle rate over the same time."""
        scale = self.seconds / idle.seconds

        def less(mine: dict[str, int], idles: dict[str, int]) -> dict[str, float]:
            left = {k: v - idles.get(k, 0) * scale for k, v in mine.items()}
            return {k: v for k, v in left.items() if v > 0}

        return Sample(less(self.calls, idle.calls), less(self.usec, idle.usec),  # type: ignore[arg-type]
                      max(0.0, self.cpu_s - idle.cpu_s * scale), self.seconds)


class RedisMeter:
    """Resets and reads the stats of the stack's redis-server."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self._cpu = 0.0
        self._started = 0.0

    def _cpu_s(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def start(self) -> None:
        self.client.config_resetstat()
        self._cpu, self._started = self._cpu_s(), time.perf_counter()

    def stop(self) -> Sample:
        seconds = time.perf_counter() - self._started
        cpu = self._cpu_s() - self._cpu
        stats = self.client.info("commandstats")
        mine = {name.removeprefix("cmdstat_"): v for name, v in stats.items()
                if name.removeprefix("cmdstat_") not in OWN}
        return Sample({k: int(v["calls"]) for k, v in mine.items()}, {k: int(v["usec"]) for k, v in mine.items()},
                      cpu, seconds)


async def wait_terminal(receiver: Receiver, ids: list[str], timeout_s: float) -> None:
    """Until the last webhook of every id says a terminal status (a group's progress webhooks
    come first)."""
    deadline = time.perf_counter() + timeout_s
    while any(receiver.statuses.get(i) not in TERMINAL for i in ids):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"not finished after {timeout_s}s: {[receiver.statuses.get(i) for i in ids]}")
        await asyncio.sleep(0.02)


async def singles(base: str, key: str, host: ImageHost, receiver: Receiver, count: int, offset: int) -> list[str]:
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async def one(i: int) -> str:
            async with limit:
                return (await post_image(client, key, host.url(offset + i), MODELS, receiver.url))[0]

        ids = await asyncio.gather(*(one(i) for i in range(count)))
    await wait_terminal(receiver, ids, 300)
    return ids


async def group(base: str, key: str, host: ImageHost, receiver: Receiver, count: int, offset: int) -> list[str]:
    body = {"images": [{"url": host.url(offset + i)} for i in range(count)], "models": MODELS,
            "webhookUrl": receiver.url}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        response = await client.post("/v1/groups", json=body, headers=bearer(key))
        response.raise_for_status()
        group_id = response.json()["id"]
    await wait_terminal(receiver, [group_id], 300)
    return [group_id]


def per_image(sample: Sample, images: int, top: int = 8) -> dict[str, object]:
    commands = sum(sample.calls.values()) / images
    ordered = sorted(sample.calls.items(), key=lambda kv: -kv[1])[:top]
    costly = sorted(sample.usec.items(), key=lambda kv: -kv[1])[:top]
    return {
        "images": images,
        "commands_per_image": round(commands, 1),
        "redis_cpu_ms_per_image": round(sample.cpu_s * 1000 / images, 3),
        "seconds": round(sample.seconds, 2),
        "top_commands_per_image": {k: round(v / images, 2) for k, v in ordered},
        # Redis's own time in each command (commandstats usec: a script's includes its inner calls)
        "top_command_us_per_image": {k: round(v / images, 1) for k, v in costly},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=50)
    parser.add_argument("--group", type=int, default=100)
    parser.add_argument("--bulk", type=int, default=150)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=8, help="commands listed per flow")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    host = ImageHost(jpeg_variants(16)).start()
    receiver = Receiver()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            models="tiny", data_dir=Path(data_dir), allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
            **({"bulk_threshold": args.bulk} if args.bulk else {}),
        )
        stack = LocalStack(settings, host=HOST, port=free_port(), embedded_redis=True, num_cpus=2).start()
        try:
            key = create_api_key(stack.settings, "bench-store")
            meter = RedisMeter(stack.settings.redis_url)

            async def run() -> None:
                await singles(stack.url, key, host, receiver, 8, offset=0)  # warm-up
                await asyncio.sleep(2)
                meter.start()
                await asyncio.sleep(args.idle_seconds)
                idle = meter.stop()
                results["idle"] = {"commands_per_s": round(sum(idle.calls.values()) / idle.seconds, 1),
                                   "redis_cpu_ms_per_s": round(idle.cpu_s * 1000 / idle.seconds, 2),
                                   "commands": dict(sorted(idle.calls.items(), key=lambda kv: -kv[1]))}
                print(f"idle: {results['idle']}", flush=True)
                flows = (("single", singles, args.singles), ("group", group, args.group),
                         ("bulk", group, args.bulk))
                for offset, (name, flow, count) in enumerate(flows, start=1):
                    if count == 0:  # a flow asked away: --bulk 0
                        continue
                    meter.start()
                    await flow(stack.url, key, host, receiver, count, offset=offset * 10_000)
                    results[name] = per_image(meter.stop().minus(idle), count, args.top)
                    print(f"{name}: {results[name]}", flush=True)
                    await asyncio.sleep(2)

            asyncio.run(run())
        finally:
            stack.stop()
            host.stop()
    flows = [results[name] for name in ("single", "group", "bulk") if name in results]
    worst_commands = max(float(f["commands_per_image"]) for f in flows)  # type: ignore[arg-type]
    worst_cpu = max(float(f["redis_cpu_ms_per_image"]) for f in flows)  # type: ignore[arg-type]
    summary = {
        "benchmark": "store",
        "commands_per_image": worst_commands,
        "target_commands": TARGET_COMMANDS,
        "redis_cpu_ms_per_image": worst_cpu,
        "target_cpu_ms": TARGET_CPU_MS,
        "images_per_s_per_redis_core": round(1000 / worst_cpu, 0) if worst_cpu else None,
        "meets_targets": worst_commands <= TARGET_COMMANDS and worst_cpu <= TARGET_CPU_MS,
        **results,
        "models": MODELS,
        "machine": machine(),
    }
    print(f"worst flow: {worst_commands} commands and {worst_cpu} ms Redis CPU per image "
          f"(targets <= {TARGET_COMMANDS}, <= {TARGET_CPU_MS} ms)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
