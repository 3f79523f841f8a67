"""Images/s from ``POST /v1/images`` to the received webhook vs the same models in a bare loop.

Measured as shipped (issue 16): each stack round is a fresh process in which ``LocalStack``
starts Ray itself (every CPU it detects, Serve in the ingress mode of ``--serve-ingress``:
HAProxy, the default, or Serve's Python proxy), default settings, the ``bench`` profile (real
architectures at mid-size shapes, random weights, built here; its deployments as the profile
ships them), a private redis-server, a loopback image host serving JPEG photos (640x480 and
800x533) and a loopback webhook receiver. Every image asks for ``--models`` (default: all four).

* throughput: ``--images`` images are posted, ``--concurrency`` at a time (the client's load, not
  a product setting); images/s from the first POST to the last webhook (each must say
  ``complete``);
* latency at half load: images posted open-loop at half that rate for ``--latency-seconds``;
  POST sent -> its webhook received; p50 and p99;
* bare, the limits, with the same cores: one bare worker per core (single-threaded processes
  started together, ``benchmarks.common.side_by_side``), each running the units one after the
  other on pre-decoded images at the registry's batch sizes; images/s with every model done,
  summed over the workers:
  - naive: ``BareLoop`` per model, each model alone (its own CLIP forward);
  - shared: ``BareLoop`` per serving group (``core.registry.serving_groups``): the three CLIP
    models as one backbone, one forward per image and a head per model, as the stack serves them.

Rounds are interleaved (bare, each Serve mode; the order reversed every other round). Every
figure is the median of the rounds with min-max; a ratio is the median of the rounds' ratios
(each round's stack against that round's bare workers).

ratio = end to end (shipped mode) / shared bare; target >= 0.90. ratio_naive = end to end /
naive bare; target >= 1.5 (the shared backbone must beat running the models one by one).

    .venv/bin/python -m benchmarks.bench_e2e [--images 240] [--repeats 3] [--serve-ingress both]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HOST,
    READY,
    BareLoop,
    ImageHost,
    Receiver,
    bench_registry,
    cpu_by_process,
    cpu_delta,
    decoded_images,
    interleaved,
    jpeg_variants,
    machine,
    median,
    open_loop,
    percentile,
    run_child,
    side_by_side,
    spread,
    spread_of,
    throughput,
)
from core.registry import ModelGroup, ModelSpec, serving_groups
from core.settings import ServeIngress, Settings
from core.store import Store
from serve_app.local import free_port
from serve_app.stack import LocalStack

TARGET = 0.90
TARGET_NAIVE = 1.5
BARE = "bare"
MODULE = "benchmarks.bench_e2e"


def units_of(models: list[str]) -> dict[str, dict[str, ModelSpec | ModelGroup]]:
    """The two limits' units: each model alone (naive), and each serving group (shared)."""
    specs = bench_registry()
    return {"naive": {name: specs[name] for name in models},
            "shared": {"+".join(g.names): g for g in serving_groups(specs[name] for name in models)}}


def bare_worker(models: list[str], seconds: float) -> dict[str, Any]:
    """One bare worker (one thread): every unit of both limits on the same images, one after
    the other, once the parent says go; images/s and CPU ms per image of each unit."""
    images = decoded_images(16)
    loops = {kind: {name: BareLoop(unit, images, threads=1) for name, unit in units.items()}
             for kind, units in units_of(models).items()}
    print(READY, flush=True)
    sys.stdin.readline()
    out: dict[str, Any] = {}
    for kind, by_name in loops.items():
        for name, loop in by_name.items():
            wall, cpu = time.perf_counter(), time.process_time()
            rate = loop.predict_rate(seconds)
            out[f"{kind}:{name}"] = {"ips": rate, "cpu_ms": (time.process_time() - cpu) * 1000
                                     / (rate * (time.perf_counter() - wall))}
    return out


def bare_round(args: argparse.Namespace) -> dict[str, Any]:
    """The limits with the same cores as the stack: one bare worker per core, side by side."""
    cores = os.cpu_count() or 1
    workers = side_by_side(MODULE, ["--child", BARE, "--models", args.models,
                                    "--bare-seconds", str(args.bare_seconds)], cores)
    figures: dict[str, Any] = {"workers": cores}
    for kind in ("naive", "shared"):
        names = [k for k in workers[0] if k.startswith(f"{kind}:")]
        # a worker does every unit on each image: its all-models rate is the harmonic sum
        per_worker = [1.0 / sum(1.0 / w[name]["ips"] for name in names) for w in workers]
        figures[f"{kind}_ips"] = sum(per_worker)
        figures[f"{kind}_cpu_ms"] = median([sum(w[name]["cpu_ms"] for name in names) for w in workers])
        figures[f"{kind}_per_unit_ips"] = {name.split(":", 1)[1]: round(sum(w[name]["ips"] for w in workers), 2)
                                           for name in names}
    return figures


async def latency(base: str, key: str, host: ImageHost, receiver: Receiver, models: list[str], rate: float,
                  seconds: float, offset: int) -> list[float]:
    sent = await open_loop(base, key, lambda i: host.url(offset + i), receiver, models, rate, seconds)
    await receiver.wait([i for i, _ in sent], timeout_s=600)
    return [receiver.arrived[i] - t for i, t in sent]


def stack_round(args: argparse.Namespace, ingress: ServeIngress) -> dict[str, Any]:
    """One fresh stack as shipped (Ray started by ``LocalStack``) in Serve mode ``ingress``."""
    models = [m for m in args.models.split(",") if m]
    host = ImageHost(jpeg_variants(16)).start()
    receiver = Receiver()
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            models="bench", data_dir=Path(data_dir), allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
            serve_ingress=ingress,
        )
        stack = LocalStack(settings, host=HOST, port=free_port(), embedded_redis=True).start()
        try:
            async def run() -> dict[str, Any]:
                store = Store.from_settings(stack.settings)
                key = await store.accounts.create_api_key("bench-e2e")
                await store.close()
                await throughput(stack.url, key, [host.url(i) for i in range(32)], receiver, models,
                                 args.concurrency)  # warm-up: connections, replicas, caches
                before = cpu_by_process()
                urls = [host.url(1000 + i) for i in range(args.images)]
                rate = await throughput(stack.url, key, urls, receiver, models, args.concurrency)
                cpu = cpu_delta(before, cpu_by_process())
                lat = await latency(stack.url, key, host, receiver, models, rate / 2, args.latency_seconds,
                                    offset=100_000)
                return {"e2e_ips": rate, "cpu_ms_per_image": sum(cpu.values()) * 1000 / args.images,
                        "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
                        "latency_samples": len(lat),
                        "cpu_ms_by_process": {k: round(v * 1000 / args.images, 2)
                                              for k, v in sorted(cpu.items(), key=lambda x: -x[1])}}

            return asyncio.run(run())
        finally:
            stack.stop()
            host.stop()


STACK_FIGURES = ("e2e_ips", "cpu_ms_per_image", "p50_ms", "p99_ms")
BARE_FIGURES = ("naive_ips", "shared_ips", "naive_cpu_ms", "shared_cpu_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--models", default="object_detection,room_classification,condition_score,quality_score")
    parser.add_argument("--concurrency", type=int, default=48, help="POSTs in flight in the throughput phase")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--bare-seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (bare, each Serve mode)")
    parser.add_argument("--serve-ingress", default="both", choices=["both", *(m.value for m in ServeIngress)])
    parser.add_argument("--child", choices=[BARE, *(m.value for m in ServeIngress)], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == BARE:
        print(json.dumps(bare_worker([m for m in args.models.split(",") if m], args.bare_seconds)))
        return
    if args.child:
        print(json.dumps({"round": stack_round(args, ServeIngress(args.child))}))
        return
    print(f"machine: {machine()}")
    bench_registry()  # built once here, before workers that would each build it at once
    modes = [m.value for m in ServeIngress] if args.serve_ingress == "both" else [args.serve_ingress]
    child_args = ["--images", str(args.images), "--models", args.models, "--concurrency", str(args.concurrency),
                  "--latency-seconds", str(args.latency_seconds)]

    def one(variant: str) -> dict[str, Any]:
        if variant == BARE:
            return {"round": bare_round(args)}
        return run_child(MODULE, [*child_args, "--child", variant])

    runs = {k: [r["round"] for r in v] for k, v in interleaved([BARE, *modes], args.repeats, one).items()}
    bare = {k: spread_of(runs[BARE], k) for k in BARE_FIGURES}
    per_mode = {mode: {k: spread_of(runs[mode], k) for k in STACK_FIGURES} for mode in modes}
    for mode in modes:  # each round's stack against that round's limits
        for kind in ("shared", "naive"):
            per_mode[mode][f"ratio_{kind}"] = spread([s["e2e_ips"] / b[f"{kind}_ips"]
                                                      for s, b in zip(runs[mode], runs[BARE], strict=True)])
        per_mode[mode]["ratio_cpu"] = spread([b["shared_cpu_ms"] / s["cpu_ms_per_image"]
                                              for s, b in zip(runs[mode], runs[BARE], strict=True)])
    shipped = Settings().serve_ingress.value
    headline_mode = shipped if shipped in per_mode else modes[0]
    headline = per_mode[headline_mode]
    summary = {
        "benchmark": "e2e",
        "ratio": headline["ratio_shared"]["median"],
        "target": TARGET,
        "ratio_naive": headline["ratio_naive"]["median"],
        "target_naive": TARGET_NAIVE,
        "serve_ingress": headline_mode,
        "e2e_ips": headline["e2e_ips"]["median"],
        "cpu_ms_per_image": headline["cpu_ms_per_image"]["median"],
        "bare": bare,
        "bare_workers": runs[BARE][0]["workers"],
        "bare_per_unit_ips": [r["shared_per_unit_ips"] | r["naive_per_unit_ips"] for r in runs[BARE]],
        "by_serve_ingress": per_mode,
        "cpu_ms_by_process": {mode: sorted(runs[mode], key=lambda r: r["e2e_ips"])[len(runs[mode]) // 2][
            "cpu_ms_by_process"] for mode in modes},  # of the median round
        "models": args.models.split(","),
        "images": args.images,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "machine": machine(),
    }
    if len(modes) == 2:
        summary["e2e_ips_haproxy_over_proxy"] = round(
            per_mode["haproxy"]["e2e_ips"]["median"] / per_mode["proxy"]["e2e_ips"]["median"], 2)
    for name, figures in [(BARE, bare), *per_mode.items()]:
        print(f"{name}: " + ", ".join(f"{k} {v['median']} ({v['min']}-{v['max']})" for k, v in figures.items()))
    print(f"ratio_naive (end to end, {headline_mode} / naive bare, {summary['bare_workers']} workers) = "
          f"{summary['ratio_naive']} (target >= {TARGET_NAIVE})")
    print(f"ratio (end to end, {headline_mode} / shared-backbone bare, median of {args.repeats} rounds) = "
          f"{summary['ratio']} (target >= {TARGET})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
