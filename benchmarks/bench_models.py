"""Each model behind its Serve deployment vs the same model in a bare inference loop.

For every model of the ``bench`` profile (built locally: real architectures, random weights,
mid-size shapes) this measures images/s

* bare: ``benchmarks.common.BareLoop`` at the registry's batch size with as many torch threads
  as the model's replica has CPUs (the profile's ``resources.num_cpus``), in this process;
* served: the model's own deployment as the profile ships it (``deployments.serving.bind_model``
  of the unchanged spec: its replicas, CPUs and ``target_ongoing_requests``; Ray gives the
  replica as many torch threads as CPUs), on a Ray with every CPU of the machine, called exactly
  as the job processor calls it: each decoded 640x480 / 800x533 photo is ``ray.put`` once and
  handed to the processor's own client (``deployments.model_client.model_clients``: requests of
  up to a batch, two in flight per replica). The load is a closed loop of ``3 x max_batch_size``
  images: enough to keep that client full (two requests out, a third batch gathering), as the
  processor does with a backlog (it holds up to ``engine_max_in_flight`` jobs).
  ``--per-image-requests`` sends one Serve request per image instead (``handle.predict``), to
  show what coalescing saves. ``--threads N`` gives both sides N CPUs instead of the profile's
  (not as shipped; for a what-if).

The two alternate in ``--rounds`` short rounds (the machine may be shared; alternating exposes
both to the same background load) and the medians are compared. ratio = served / bare predict
loop; the worst model's ratio is the benchmark's. The ratio against the forward-only bare loop
(batches prepared beforehand) is printed too. Target >= 0.90.

Wall-clock rates move with whatever else runs on the machine, so each round also records the CPU
seconds this process tree used (driver, Ray's GCS and raylet, the replica): ``ratio_cpu`` is
served images per CPU-second over bare images per CPU-second, the serving overhead alone.

    .venv/bin/python -m benchmarks.bench_models [--seconds 4] [--rounds 4] [--models a,b] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from benchmarks.common import BareLoop, bench_registry, decoded_images, machine, median, tree_cpu_seconds
from core.registry import ModelSpec, Resources
from core.settings import RAY_NAMESPACE
from deployments.model_client import ModelClient, model_clients
from imaging import DecodedImage

TARGET = 0.90
APP = "bench-models"


def deploy(spec: ModelSpec) -> DeploymentHandle:
    from deployments.serving import bind_model

    return serve.run(bind_model(spec), name=APP, route_prefix=None)


def with_threads(spec: ModelSpec, threads: int | None) -> ModelSpec:
    """The spec as shipped, or (``--threads``) with that many CPUs for its replica."""
    if threads is None:
        return spec
    return spec.model_copy(update={"resources": Resources(num_cpus=threads, num_gpus=0)})


async def served_rate(handle: DeploymentHandle, images: list[DecodedImage], concurrency: int, seconds: float,
                      client: ModelClient | None, model: str) -> float:
    """Images/s with ``concurrency`` images always in flight (after a warm-up): through
    ``client`` (put once, coalesced) or, without one, one ``handle.predict`` request per image."""
    done = 0

    async def call(image: DecodedImage) -> None:
        if client is None:
            await handle.predict.remote(image)
        else:
            await client.predict(ray.put(image), model)

    async def one(k: int, until: float) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < until:
            await call(images[i % len(images)])
            done += 1
            i += concurrency

    await asyncio.gather(*(one(k, time.perf_counter() + 1.0) for k in range(concurrency)))
    done = 0
    started = time.perf_counter()
    await asyncio.gather(*(one(k, started + seconds) for k in range(concurrency)))
    return done / (time.perf_counter() - started)


def measured(run: Callable[[], float], per_cpu: list[float]) -> float:
    """``run()``'s images/s; appends images per CPU-second of this whole process tree."""
    wall, cpu = time.perf_counter(), tree_cpu_seconds()
    rate = run()
    per_cpu.append(rate * (time.perf_counter() - wall) / (tree_cpu_seconds() - cpu))
    return rate


async def batch_stats(handle: DeploymentHandle) -> dict[str, float]:
    return await handle.batch_stats.remote()


def bench_model(spec: ModelSpec, images: list[DecodedImage], args: argparse.Namespace) -> dict:
    spec = with_threads(spec, args.threads)
    bare = BareLoop(spec, images, int(spec.resources.num_cpus))
    handle = deploy(spec)
    concurrency = 3 * spec.batching.max_batch_size
    client = None if args.per_image_requests else model_clients({spec.name: spec}, {spec.name: handle})[spec.name]
    predict, forward, served, bare_cpu, served_cpu = [], [], [], [], []
    try:
        for _ in range(args.rounds):
            predict.append(measured(lambda: bare.predict_rate(args.seconds), bare_cpu))
            served.append(measured(
                lambda: asyncio.run(served_rate(handle, images, concurrency, args.seconds, client, spec.name)),
                served_cpu,
            ))
            forward.append(bare.forward_rate(args.seconds))
        batches = asyncio.run(batch_stats(handle))
    finally:
        serve.delete(APP)
    row = {
        "batch": spec.batching.max_batch_size,
        "mean_batch_size": round(batches["mean_batch_size"], 2),
        "images_per_request": round(client.stats()["images_per_request"], 2) if client else 1.0,
        "served_ips": round(median(served), 2),
        "bare_predict_ips": round(median(predict), 2),
        "bare_forward_ips": round(median(forward), 2),
        "images_per_cpu_s": {"served": round(median(served_cpu), 2), "bare_predict": round(median(bare_cpu), 2)},
        "rounds": {"served": [round(x, 2) for x in served], "bare_predict": [round(x, 2) for x in predict],
                   "bare_forward": [round(x, 2) for x in forward]},
    }
    row["ratio"] = round(row["served_ips"] / row["bare_predict_ips"], 3)
    row["ratio_vs_forward"] = round(row["served_ips"] / row["bare_forward_ips"], 3)
    row["ratio_cpu"] = round(median(served_cpu) / median(bare_cpu), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="CPUs (torch threads) for both the bare loop and the replica instead of the "
                             "profile's (a what-if: not as shipped)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measuring round")
    parser.add_argument("--rounds", type=int, default=4, help="bare/served rounds per model")
    parser.add_argument("--models", default="", help="comma-separated subset of the bench profile")
    parser.add_argument("--per-image-requests", action="store_true",
                        help="one Serve request per image instead of the processor's coalescing client")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    specs = bench_registry()
    names = [n for n in args.models.split(",") if n] or list(specs)
    images = decoded_images(16)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             namespace=RAY_NAMESPACE)
    serve.start()
    results = {}
    try:
        for name in names:
            row = results[name] = bench_model(specs[name], images, args)
            print(f"{name:20s} batch {row['batch']:2d} (formed {row['mean_batch_size']}, "
                  f"{row['images_per_request']} img/request): served {row['served_ips']:7.2f} img/s | bare predict "
                  f"{row['bare_predict_ips']:7.2f} | bare forward {row['bare_forward_ips']:7.2f} | ratio "
                  f"{row['ratio']:.3f} (vs forward {row['ratio_vs_forward']:.3f}; "
                  f"per CPU-second {row['ratio_cpu']:.3f})  rounds {row['rounds']}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    worst = min(results, key=lambda n: results[n]["ratio"])
    summary = {
        "benchmark": "models",
        "ratio": results[worst]["ratio"],
        "target": TARGET,
        "worst_model": worst,
        "ratio_cpu": min(r["ratio_cpu"] for r in results.values()),
        "threads": args.threads or "the profile's",
        "client": "per-image requests" if args.per_image_requests else "ModelClient (put once, coalesced)",
        "seconds": args.seconds,
        "rounds": args.rounds,
        "models": results,
        "machine": machine(),
    }
    print(f"ratio (served / bare predict loop, worst model {worst}) = {summary['ratio']} (target >= {TARGET}); "
          f"per CPU-second {summary['ratio_cpu']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
