"""Image-host latency: online images/s when the image host answers at once and after 250 ms.

Real image hosts (CDNs, buckets) answer in 50-500 ms. An engine that holds a worker per image
while it waits for the host is capped at workers / latency whatever the models could do; one
with enough fetches in flight is not. Measured as a user runs the product (issue 14):

* the stack as shipped (``LocalStack``, default settings, a private redis-server), serving one
  model: ``room_classification`` of the ``bench`` profile (CLIP at mid-size shapes, random
  weights, built locally). Why ``bench`` and not ``tiny``: a bench batch takes tens of
  milliseconds on a CPU, as real models do on small hardware, so the question is whether the
  engine keeps a real model fed; a tiny model costs next to nothing and the figure would only
  measure the processor's own CPU;
* ``--images`` JPEG photos (640x480, 800x533) posted ``--concurrency`` at a time to
  ``POST /v1/images`` with a webhook; images/s from the first POST to the last webhook (each
  must say ``complete``), with the loopback image host answering after 0 ms, then after
  ``--latency-ms`` (the delay is in each URL's path; the host is asyncio, so a slow answer costs
  it no thread);
* the model's served capacity, measured as ``bench_models`` does (its ``served_rate``: decoded
  images ``ray.put`` and sent through a ``ModelClient`` with 3 x ``max_batch_size`` in flight),
  against the stack's own replica of the model, between the runs.

Capacity, 0 ms and slow runs are interleaved in ``--repeats`` rounds (the order of the two
latencies alternates) so all three meet the same background load; medians are compared and the
spread printed. ``ratio`` = images/s at ``--latency-ms`` / at 0 ms (target >= 0.90);
``ratio_vs_capacity`` = images/s at 0 ms / served capacity (target >= 0.90).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_host_latency.py [--images 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import tempfile
from pathlib import Path

import yaml
from ray import serve

from benchmarks.bench_models import served_rate
from benchmarks.common import (
    HOST,
    ImageHost,
    Receiver,
    bench_registry,
    cpu_by_process,
    cpu_delta,
    create_api_key,
    decoded_images,
    jpeg_variants,
    machine,
    median,
    spread,
    throughput,
)
from core.registry import ModelSpec
from core.settings import Settings
from deployments.model_client import ModelClient
from serve_app.gateway import APP_NAME
from serve_app.local import free_port
from serve_app.stack import LocalStack

TARGET = 0.90
CAPACITY_TARGET = 0.90


def one_model_registry(spec: ModelSpec, directory: Path) -> Path:
    """A registry file serving only ``spec`` (the profile's other models would idle beside it)."""
    path = directory / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": {spec.name: spec.model_dump(mode="json", exclude_none=True)}}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="room_classification", help="a model of the bench profile")
    parser.add_argument("--images", type=int, default=300, help="images per run")
    parser.add_argument("--latency-ms", type=int, default=250, help="the slow image host's delay")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=48, help="POSTs in flight")
    parser.add_argument("--capacity-seconds", type=float, default=4.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    spec = bench_registry()[args.model]
    host = ImageHost(jpeg_variants(16)).start()
    receiver = Receiver()
    rates: dict[int, list[float]] = {0: [], args.latency_ms: []}
    capacity: list[float] = []
    cpu: dict[int, dict[str, float]] = {0: {}, args.latency_ms: {}}
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            models=str(one_model_registry(spec, Path(data_dir))), data_dir=Path(data_dir),
            allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        stack = LocalStack(settings, host=HOST, port=free_port(), embedded_redis=True).start()
        try:
            key = create_api_key(stack.settings, "org_bench_latency")

            async def run() -> None:
                handle = serve.get_deployment_handle(spec.deployment_name, app_name=APP_NAME)
                client = ModelClient(handle, spec.batching.max_batch_size, max_in_flight=2)
                images = decoded_images(16)
                offset = 0

                async def images_per_s(delay_ms: int, count: int) -> float:
                    nonlocal offset
                    urls = [host.url(offset + i, delay_ms) for i in range(count)]
                    offset += count
                    return await throughput(stack.url, key, urls, receiver, [spec.name], args.concurrency)

                await images_per_s(0, 32)  # warm-up: connections, replicas, caches
                for repeat in range(args.repeats):
                    capacity.append(await served_rate(handle, images, 3 * spec.batching.max_batch_size,
                                                      args.capacity_seconds, client, spec.name))
                    order = [0, args.latency_ms] if repeat % 2 == 0 else [args.latency_ms, 0]
                    for delay_ms in order:
                        before = cpu_by_process()
                        rates[delay_ms].append(await images_per_s(delay_ms, args.images))
                        for label, seconds in cpu_delta(before, cpu_by_process()).items():
                            cpu[delay_ms][label] = cpu[delay_ms].get(label, 0.0) + seconds
                    print(f"round {repeat + 1}: capacity {capacity[-1]:.1f} img/s, host at 0 ms "
                          f"{rates[0][-1]:.1f} img/s, at {args.latency_ms} ms {rates[args.latency_ms][-1]:.1f} img/s",
                          flush=True)

            asyncio.run(run())
        finally:
            stack.stop()
            host.stop()
    fast, slow, served = median(rates[0]), median(rates[args.latency_ms]), median(capacity)
    per_image = {
        f"{delay}ms": {k: round(v * 1000 / (args.images * args.repeats), 2)
                       for k, v in sorted(table.items(), key=lambda kv: -kv[1])}
        for delay, table in cpu.items()
    }
    summary = {
        "benchmark": "host_latency",
        "ratio": round(slow / fast, 3),
        "target": TARGET,
        "ratio_vs_capacity": round(fast / served, 3),
        "capacity_target": CAPACITY_TARGET,
        "ips_host_0ms": spread(rates[0]),
        f"ips_host_{args.latency_ms}ms": spread(rates[args.latency_ms]),
        "served_capacity_ips": spread(capacity),
        "cpu_ms_per_image_by_process": per_image,
        "model": args.model,
        "profile": "bench",
        "images": args.images,
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "machine": machine(),
    }
    for delay, table in per_image.items():
        print(f"CPU per image, host at {delay} ({sum(table.values()):.1f} ms in all): "
              + ", ".join(f"{k} {v}" for k, v in table.items()))
    print(f"images/s: host at 0 ms {fast:.1f} ({min(rates[0]):.1f}-{max(rates[0]):.1f}), at {args.latency_ms} ms "
          f"{slow:.1f} ({min(rates[args.latency_ms]):.1f}-{max(rates[args.latency_ms]):.1f}); served capacity "
          f"{served:.1f} ({min(capacity):.1f}-{max(capacity):.1f})")
    print(f"ratio ({args.latency_ms} ms / 0 ms) = {summary['ratio']} (target >= {TARGET}); 0 ms / capacity = "
          f"{summary['ratio_vs_capacity']} (target >= {CAPACITY_TARGET})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
