"""Images/s from ``POST /v1/images`` to the received webhook vs the same models in a bare loop.

The whole stack runs locally with the ``bench`` profile (real architectures at mid-size shapes,
random weights, built here; one replica per model with 1 CPU, so 1 torch thread each), a
private redis-server, a loopback image host serving JPEG photos (640x480 and 800x533) and a
loopback webhook receiver. Every image asks for ``--models`` (default: all four).

* throughput: ``--images`` images are posted as fast as the API takes them; images/s is counted
  from the first POST to the last webhook received (every webhook must say ``complete``);
* latency at half load: images are posted open-loop at half that rate for ``--latency-seconds``;
  each image's latency is POST sent -> its webhook received; p50 and p99 are reported;
* bare, two limits, each measured before and after the stack runs (``--threads`` torch threads,
  pre-decoded images, the registry's batch sizes), the loops one after the other on the same
  batches, images/s with every model done:
  - naive: ``benchmarks.common.BareLoop`` per model, each model alone (its own CLIP forward);
  - shared: ``BareLoop`` per serving group (``core.registry.serving_groups``): the three CLIP
    models as one backbone, one forward per image and a head per model, as the stack serves them.

ratio = end-to-end images/s / shared bare images/s; target >= 0.90. ratio_naive = end-to-end /
naive bare; target >= 1.5 (the shared backbone must beat running the models one by one).

    .venv/bin/python -m benchmarks.bench_e2e [--images 240] [--models a,b] [--concurrency 48]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import tempfile
import time
from pathlib import Path

import ray

from benchmarks.common import (
    HOST,
    BareLoop,
    ImageHost,
    Receiver,
    bench_registry,
    cpu_by_process,
    cpu_delta,
    decoded_images,
    jpeg_variants,
    machine,
    open_loop,
    percentile,
    throughput,
    tree_cpu_seconds,
)
from core.registry import ModelGroup, ModelSpec, serving_groups
from core.settings import RAY_NAMESPACE, Settings
from core.store import Store
from serve_app.local import free_port
from serve_app.stack import LocalStack

TARGET = 0.90
TARGET_NAIVE = 1.5


async def latency(base: str, key: str, host: ImageHost, receiver: Receiver, models: list[str], rate: float,
                  seconds: float, offset: int) -> list[float]:
    sent = await open_loop(base, key, lambda i: host.url(offset + i), receiver, models, rate, seconds)
    await receiver.wait([i for i, _ in sent], timeout_s=600)
    return [receiver.arrived[i] - t for i, t in sent]


def bare_rate(units: dict[str, ModelSpec | ModelGroup], seconds: float, threads: int
              ) -> tuple[float, dict[str, float], float]:
    """Each of ``units`` (a model, or a serving group) on the same images, one after the other:
    images/s with every unit done, images/s per unit, and CPU seconds per image (all units)."""
    images = decoded_images(16)
    per_model, cpu_per_image = {}, 0.0
    for name, unit in units.items():
        loop = BareLoop(unit, images, threads)
        wall, cpu = time.perf_counter(), tree_cpu_seconds()
        per_model[name] = loop.predict_rate(seconds)
        cpu_per_image += (tree_cpu_seconds() - cpu) / (per_model[name] * (time.perf_counter() - wall))
    return 1.0 / sum(1.0 / r for r in per_model.values()), per_model, cpu_per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--models", default="object_detection,room_classification,condition_score,quality_score")
    parser.add_argument("--concurrency", type=int, default=48, help="POSTs in flight in the throughput phase")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--bare-seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    print(f"machine: {machine()}")
    specs = bench_registry()
    naive: dict[str, ModelSpec | ModelGroup] = {name: specs[name] for name in models}
    shared: dict[str, ModelSpec | ModelGroup] = {
        "+".join(group.names): group for group in serving_groups(specs[name] for name in models)}

    bare_before, per_model_before, bare_cpu_before = bare_rate(naive, args.bare_seconds, args.threads)
    rounded = {k: round(v, 1) for k, v in per_model_before.items()}
    print(f"bare loop (naive) before: {bare_before:.2f} img/s (per model {rounded})", flush=True)
    shared_before, per_group_before, shared_cpu_before = bare_rate(shared, args.bare_seconds, args.threads)
    rounded = {k: round(v, 1) for k, v in per_group_before.items()}
    print(f"bare loop (shared backbone) before: {shared_before:.2f} img/s (per group {rounded})", flush=True)

    host = ImageHost(jpeg_variants(16)).start()
    receiver = Receiver()
    ray.init(address="local", num_cpus=len(models) + 1, include_dashboard=False, log_to_driver=False,
             namespace=RAY_NAMESPACE)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            models="bench", data_dir=Path(data_dir), allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        stack = LocalStack(settings, host=HOST, port=free_port(), embedded_redis=True).start()
        try:
            async def run() -> tuple[float, list[float]]:
                store = Store.from_settings(stack.settings)
                key = await store.accounts.create_api_key("bench-e2e")
                await store.close()
                warm_up = [host.url(i) for i in range(32)]
                await throughput(stack.url, key, warm_up, receiver, models, args.concurrency)
                before = cpu_by_process()
                urls = [host.url(1000 + i) for i in range(args.images)]
                rate = await throughput(stack.url, key, urls, receiver, models, args.concurrency)
                cpu.update(cpu_delta(before, cpu_by_process()))
                print(f"end to end: {rate:.2f} img/s ({args.images} images, every model complete)", flush=True)
                lat = await latency(stack.url, key, host, receiver, models, rate / 2, args.latency_seconds,
                                    offset=100_000)
                return rate, lat

            cpu: dict[str, float] = {}
            e2e, latencies = asyncio.run(run())
        finally:
            stack.stop()
            ray.shutdown()
            host.stop()
    bare_after, per_model_after, bare_cpu_after = bare_rate(naive, args.bare_seconds, args.threads)
    shared_after, per_group_after, shared_cpu_after = bare_rate(shared, args.bare_seconds, args.threads)
    bare = (bare_before + bare_after) / 2
    bare_shared = (shared_before + shared_after) / 2
    bare_cpu_ms = (bare_cpu_before + bare_cpu_after) / 2 * 1000
    shared_cpu_ms = (shared_cpu_before + shared_cpu_after) / 2 * 1000
    e2e_cpu_ms = sum(cpu.values()) * 1000 / args.images
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    summary = {
        "benchmark": "e2e",
        "ratio": round(e2e / bare_shared, 3),
        "target": TARGET,
        "ratio_naive": round(e2e / bare, 3),
        "target_naive": TARGET_NAIVE,
        "e2e_ips": round(e2e, 2),
        "bare_shared_ips": round(bare_shared, 2),
        "bare_shared_runs": [round(shared_before, 2), round(shared_after, 2)],
        "bare_ips": round(bare, 2),
        "bare_runs": [round(bare_before, 2), round(bare_after, 2)],
        "ratio_cpu": round(shared_cpu_ms / e2e_cpu_ms, 3),
        "cpu_ms_per_image": round(e2e_cpu_ms, 1),
        "bare_shared_cpu_ms_per_image": round(shared_cpu_ms, 1),
        "bare_cpu_ms_per_image": round(bare_cpu_ms, 1),
        "bare_per_model_ips": {k: round((per_model_before[k] + per_model_after[k]) / 2, 2) for k in models},
        "bare_shared_per_group_ips": {k: round((per_group_before[k] + per_group_after[k]) / 2, 2) for k in shared},
        "half_load_per_s": round(e2e / 2, 2),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "latency_samples": len(latencies),
        "cpu_ms_per_image_by_process": {
            k: round(v * 1000 / args.images, 2) for k, v in sorted(cpu.items(), key=lambda x: -x[1])
        },
        "models": models,
        "images": args.images,
        "threads": args.threads,
        "machine": machine(),
    }
    print(f"bare loop after: naive {bare_after:.2f} img/s, shared backbone {shared_after:.2f} img/s")
    print(f"CPU per image in the throughput phase ({sum(cpu.values()) * 1000 / args.images:.1f} ms in all):")
    for label, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds * 1000 / args.images:7.2f} ms  {label}")
    print(f"latency at half load ({e2e / 2:.1f} img/s, {len(latencies)} images): p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"CPU per image: end to end {e2e_cpu_ms:.1f} ms, bare loop: shared backbone {shared_cpu_ms:.1f} ms, "
          f"naive {bare_cpu_ms:.1f} ms (ratio_cpu {summary['ratio_cpu']}, against the shared loop)")
    print(f"ratio_naive (end-to-end / naive bare loop) = {summary['ratio_naive']} (target >= {TARGET_NAIVE})")
    print(f"ratio (end-to-end / shared-backbone bare loop) = {summary['ratio']} (target >= {TARGET})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
