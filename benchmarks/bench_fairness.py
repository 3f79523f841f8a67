"""Fairness: one org's single images while another org's backlog is queued (SPEC §8: p99 <= 2x idle).

Measured as users run the product (issue 14): the stack as shipped (``LocalStack``, default
settings and the default ``tiny`` profile, a private redis-server), a loopback image host and a
loopback webhook receiver in this process.

1. **Idle**: org B posts one image (a real JPEG, ``--model``) every ``1 / --b-rate`` s for
   ``--idle-seconds``; each image's latency is POST sent -> its webhook received.
2. **Backlog**: org A queues ``--images`` images (default 100,000) as groups of ``--group-size``
   (400: below the bulk threshold, so they are online work, as a listing of photos is), four
   POSTs in flight, each group with a webhook. A's URLs answer 404 after ``--a-delay-ms``
   (0: at once, the cheapest real failure; 1000: a slow host). The RSS of the processor's and
   the API's replicas is read when 1k, 10k and 100k of A's images have been accepted, with how
   many of them were still pending (accepted minus done by A's group webhooks, which are
   throttled: an upper bound).
3. **Under load**: B posts as in 1 for ``--load-seconds`` while A's backlog is worked off;
   the replicas' RSS is sampled every ``SAMPLE_S`` meanwhile (is it flat while A's images are
   processed, or does it grow with them?). Where B's time went: each of B's records, read
   afterwards, splits its latency into *accepted* (POST sent -> ``createdAt``), *worked*
   (-> the model's ``completedAt``: queue, fetch, decode, model) and *announced* (-> the
   webhook received: finalize, notifier, delivery), and B's p50/max per ``WINDOW_S`` of send
   time shows whether the wait is steady or a spell.

Bounded in time: after each phase B's webhooks are awaited at most ``--wait-seconds``; an image
still missing then counts with the time it had waited so far (its latency is at least that),
so a starved org yields a lower bound, flagged ``censored``, instead of a benchmark that never
ends. The stack is then stopped with whatever A still has queued.

``p99_ratio`` = B's p99 under load / B's p99 idle; target <= 2; RSS should stay flat from 1k to
100k queued (the backlog lives in Redis, not in a replica).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fairness.py [--images 100000] [--a-delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    HOST,
    ImageHost,
    Receiver,
    bearer,
    create_api_key,
    jpeg_variants,
    machine,
    open_loop,
    percentile,
    replica_pids,
    rss_mb,
)
from core.settings import Settings
from serve_app.local import free_port
from serve_app.stack import LocalStack

TARGET = 2.0
CHECKPOINTS = (1_000, 10_000, 100_000)
GROUP_POSTS_IN_FLIGHT = 4
SAMPLE_S = 5.0  # RSS samples under load
WINDOW_S = 5.0  # B's latency per window of send time


def rss(deployment: str) -> list[float]:
    return [round(rss_mb(pid), 1) for pid in replica_pids(deployment)]


@dataclass
class BRun:
    """B's open-loop images of one phase: (id, sent) pairs, each latency, how many were missing."""

    sent: list[tuple[str, float]]
    latencies: list[float]
    missing: int


class Orgs:
    """The two orgs' traffic against one running stack."""

    def __init__(self, stack: LocalStack, host: ImageHost, receiver: Receiver, args: argparse.Namespace) -> None:
        self.stack = stack
        self.host = host
        self.receiver = receiver
        self.args = args
        self.key_a = create_api_key(stack.settings, "org_bench_a")
        self.key_b = create_api_key(stack.settings, "org_bench_b")
        self.groups: list[str] = []
        self.b_offset = 0
        self.wall_offset = time.time() - time.perf_counter()  # records carry wall-clock times

    async def b_latencies(self, seconds: float) -> BRun:
        """B's open-loop images for ``seconds``: each latency (a lower bound for an image still
        missing after ``--wait-seconds``) and how many were missing."""
        offset = self.b_offset
        self.b_offset += int(self.args.b_rate * seconds)
        sent = await open_loop(self.stack.url, self.key_b, lambda i: self.host.url(offset + i), self.receiver,
                               [self.args.model], self.args.b_rate, seconds)
        missing = await self.receiver.wait([i for i, _ in sent], self.args.wait_seconds, strict=False)
        now = time.perf_counter()
        return BRun(sent, [self.receiver.arrived.get(i, now) - t for i, t in sent], missing)

    async def breakdown(self, run: BRun) -> dict[str, Any]:
        """B's latency split by its records' timestamps (accepted, worked, announced), and its
        p50/max per window of send time."""
        parts: dict[str, list[float]] = {"accepted": [], "worked": [], "announced": []}
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=60, headers=bearer(self.key_b)) as client:
            for image_id, sent in run.sent:
                if image_id not in self.receiver.arrived:
                    continue
                record = (await client.get(f"/v1/images/{image_id}")).json()
                completed = record["models"][self.args.model].get("completedAt")
                if completed is None:  # failed before its model: no split
                    continue
                created = datetime.fromisoformat(record["createdAt"]).timestamp()
                done = datetime.fromisoformat(completed).timestamp()
                parts["accepted"].append(created - (sent + self.wall_offset))
                parts["worked"].append(done - created)
                parts["announced"].append(self.receiver.arrived[image_id] + self.wall_offset - done)
        first = run.sent[0][1]
        windows: dict[int, list[float]] = {}
        for (_, sent), latency in zip(run.sent, run.latencies, strict=True):
            windows.setdefault(int((sent - first) // WINDOW_S), []).append(latency)
        return {
            **{name: {"p50_ms": round(percentile(v, 50) * 1000, 1), "p99_ms": round(percentile(v, 99) * 1000, 1)}
               for name, v in parts.items() if v},
            "by_window": [{"from_s": k * WINDOW_S, "p50_ms": round(percentile(v, 50) * 1000),
                           "max_ms": round(max(v) * 1000)} for k, v in sorted(windows.items())],
        }

    async def sample_rss(self, samples: list[dict[str, Any]]) -> None:
        """Every ``SAMPLE_S`` until cancelled: the replicas' RSS and how far A has got."""
        started = time.perf_counter()
        while True:
            samples.append({"t_s": round(time.perf_counter() - started), "processor_rss_mb": rss("JobProcessor"),
                            "api_rss_mb": rss("ApiGateway"), "a_finished_at_most": self.receiver.finished(self.groups)})
            await asyncio.sleep(SAMPLE_S)

    async def queue_a(self) -> dict[str, Any]:
        """Queue A's images as groups; the replicas' RSS at each checkpoint of accepted images."""
        args = self.args
        sizes = [min(args.group_size, args.images - start) for start in range(0, args.images, args.group_size)]
        checkpoints = [c for c in CHECKPOINTS if c < args.images] + [args.images]
        samples: dict[str, Any] = {}
        accepted = 0
        limit = asyncio.Semaphore(GROUP_POSTS_IN_FLIGHT)
        started = time.perf_counter()

        async def post(client: httpx.AsyncClient, first: int, size: int) -> None:
            nonlocal accepted
            body = {"images": [{"url": self.host.missing_url(first + i, args.a_delay_ms)} for i in range(size)],
                    "models": [args.model], "webhookUrl": self.receiver.url}
            async with limit:
                response = await client.post("/v1/groups", json=body, headers=bearer(self.key_a))
            response.raise_for_status()
            self.groups.append(response.json()["id"])
            accepted += size
            while checkpoints and accepted >= checkpoints[0]:
                point = checkpoints.pop(0)
                samples[str(point)] = {
                    "accepted": accepted, "pending_at_most": accepted - self.receiver.finished(self.groups),
                    "processor_rss_mb": rss("JobProcessor"), "api_rss_mb": rss("ApiGateway"),
                    "after_s": round(time.perf_counter() - started, 1),
                }
                print(f"A: {point} accepted: {samples[str(point)]}", flush=True)

        async with httpx.AsyncClient(base_url=self.stack.url, timeout=120) as client:
            firsts = [sum(sizes[:k]) for k in range(len(sizes))]
            await asyncio.gather(*(post(client, first, size) for first, size in zip(firsts, sizes, strict=True)))
        return samples


def summarise(run: BRun) -> dict[str, Any]:
    latencies = run.latencies
    return {"p50_ms": round(percentile(latencies, 50) * 1000, 1), "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1), "images": len(latencies), "censored": run.missing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="org A's backlog")
    parser.add_argument("--group-size", type=int, default=400, help="A's images per POST /v1/groups")
    parser.add_argument("--a-delay-ms", type=int, default=0, help="A's image host answers 404 after this")
    parser.add_argument("--model", default="room_classification", help="a model of the tiny profile")
    parser.add_argument("--b-rate", type=float, default=10.0, help="B's images per second")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--wait-seconds", type=float, default=120.0, help="longest wait for B's webhooks")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    host = ImageHost(jpeg_variants(16)).start()
    receiver = Receiver()
    with tempfile.TemporaryDirectory() as data_dir:
        loopback = (ipaddress.ip_network("127.0.0.0/8"),)
        settings = Settings.from_env(data_dir=Path(data_dir), allow_private_cidrs=loopback)
        stack = LocalStack(settings, host=HOST, port=free_port(), embedded_redis=True).start()
        try:
            orgs = Orgs(stack, host, receiver, args)

            async def run() -> dict[str, Any]:
                await orgs.b_latencies(1.0)  # warm-up
                idle_run = await orgs.b_latencies(args.idle_seconds)
                idle = summarise(idle_run)
                print(f"B idle: {idle}; where: {await orgs.breakdown(idle_run)}", flush=True)
                queued = await orgs.queue_a()
                samples: list[dict[str, Any]] = []
                sampler = asyncio.create_task(orgs.sample_rss(samples))
                load_run = await orgs.b_latencies(args.load_seconds)
                sampler.cancel()
                load = summarise(load_run)
                load["a_finished_at_most"] = receiver.finished(orgs.groups)
                print(f"B under A's backlog: {load}", flush=True)
                where = await orgs.breakdown(load_run)
                print(f"where B's time went under load: {where}", flush=True)
                print(f"RSS under load: {samples}", flush=True)
                return {"idle": idle, "load": load, "rss_at_queued": queued, "load_where": where,
                        "rss_under_load": samples,
                        "rss_after": {"processor_rss_mb": rss("JobProcessor"), "api_rss_mb": rss("ApiGateway")}}

            result = asyncio.run(run())
        finally:
            stack.stop()
            host.stop()
    idle, load = result["idle"], result["load"]
    summary = {
        "benchmark": "fairness",
        "p99_ratio": round(load["p99_ms"] / idle["p99_ms"], 2),
        "target": TARGET,
        "lower_bound": bool(load["censored"]),
        "b_idle": idle,
        "b_under_load": load,
        "b_under_load_where": result["load_where"],
        "rss_under_load": result["rss_under_load"],
        "rss_at_queued": result["rss_at_queued"],
        "rss_after": result["rss_after"],
        "a_images": args.images,
        "a_group_size": args.group_size,
        "a_delay_ms": args.a_delay_ms,
        "b_rate": args.b_rate,
        "model": args.model,
        "machine": machine(),
    }
    bound = ">= " if load["censored"] else ""
    print(f"B p99: idle {idle['p99_ms']} ms, under A's backlog of {args.images} {bound}{load['p99_ms']} ms; "
          f"p99_ratio {bound}{summary['p99_ratio']} (target <= {TARGET})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
