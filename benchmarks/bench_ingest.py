"""``POST /v1/images`` requests/s vs a bare Serve FastAPI endpoint that answers 202.

Both run on the same local Ray and Serve HTTP proxy, one after the other, driven by the same lean
keep-alive HTTP load generator (``benchmarks.loadgen``) with ``--connections`` connections:

* bare: a Serve ingress deployment (same options as the API gateway: 0 CPUs, 256 ongoing
  requests) whose FastAPI route ``POST /v1/images`` answers 202 with a small JSON body without
  reading the request body (the limit as the SPEC words it), and a second route that reads and
  parses the JSON body first: Serve fetches a request body from its proxy with an extra actor
  call, which any endpoint that accepts an image pays; the ratio against it is printed too;
* Sightwire: the real stack (tiny models, private redis-server); every request is authenticated
  (hashed key lookup), validated (schema, registry, URL policy, metadata size) and written with
  its job in one Redis transaction before the 202.

By default the job processor is all but idle (one job at a time: ``engine_max_in_flight=1``) so
that only acceptance is measured; ``--processing`` lets it work the jobs off meanwhile (their images answer 404 on a
loopback host, the cheapest real failure) to show what sharing 2 CPUs with processing costs.
ratio = Sightwire / bare; target >= 0.80. Each round also records the CPU seconds of the whole
process tree (load generator, proxy, replicas, Redis, Ray) per request: ``ratio_cpu`` = bare CPU
per request / Sightwire CPU per request, which other load on a shared machine does not move.

    .venv/bin/python -m benchmarks.bench_ingest [--seconds 8] [--connections 32] [--processing]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import tempfile
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from benchmarks.common import create_api_key, machine, median, start_not_found_host, tree_cpu_seconds
from benchmarks.loadgen import build_request, run_load
from core.settings import RAY_NAMESPACE, Settings
from serve_app.local import free_port
from serve_app.stack import LocalStack

TARGET = 0.80
HOST = "127.0.0.1"

bare_api = FastAPI()


@bare_api.post("/v1/images", status_code=202)
async def accept() -> JSONResponse:
    return JSONResponse({"id": "img_bare", "object": "image", "status": "queued"}, status_code=202)


@bare_api.post("/read-body/v1/images", status_code=202)
async def accept_body(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    return JSONResponse({"id": "img_bare", "object": "image", "status": "queued", "url": body["url"]},
                        status_code=202)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(bare_api)
class BareIngest:
    pass


def measure(port: int, path: str, body_for: object, headers: dict[str, str], connections: int,
            seconds: float) -> tuple[float, float]:
    """Requests/s, and CPU milliseconds of the whole process tree per request."""
    def make(i: int) -> bytes:
        return build_request(HOST, port, path, body_for(i), headers)  # type: ignore[operator]

    cpu = tree_cpu_seconds()
    result = asyncio.run(run_load(HOST, port, make, connections, seconds, warmup_s=0.0))
    cpu = tree_cpu_seconds() - cpu
    bad = {code: n for code, n in result.statuses.items() if code != 202}
    if bad:
        raise RuntimeError(f"non-202 answers: {bad}")
    return result.rate, cpu * 1000 / result.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="bare/Sightwire alternations")
    parser.add_argument("--processing", action="store_true", help="let the processor work the jobs meanwhile")
    args = parser.parse_args()
    print(f"machine: {machine()}")

    images = start_not_found_host(HOST)
    image_base = f"http://{HOST}:{images.server_address[1]}"
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=RAY_NAMESPACE)
    bare_rates, sw_rates, bare_cpu, sw_cpu, body_rates, body_cpu = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            models="tiny", data_dir=Path(data_dir), allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
            **({} if args.processing else {"engine_max_in_flight": 1, "engine_org_max_in_flight": 1}),
        )
        stack = LocalStack(settings, host=HOST, port=port, embedded_redis=True).start()
        try:
            key = create_api_key(stack.settings, "bench-ingest")
            auth = {"Authorization": f"Bearer {key}"}

            def sightwire_body(i: int) -> bytes:
                return json.dumps({"url": f"{image_base}/{i}.jpg", "models": ["object_detection"],
                                   "metadata": {"listing": f"L-{i}"}}).encode()

            def bare_body(i: int) -> bytes:
                return sightwire_body(i)

            # warm both paths up (connections, replicas, caches), then alternate
            serve.run(BareIngest.bind(), name="bare-ingest", route_prefix="/bare")
            measure(port, "/bare/v1/images", bare_body, auth, args.connections, 1.0)
            measure(port, "/v1/images", sightwire_body, auth, args.connections, 1.0)
            for _ in range(args.rounds):
                rate, cpu = measure(port, "/bare/v1/images", bare_body, auth, args.connections, args.seconds)
                bare_rates.append(rate)
                bare_cpu.append(cpu)
                rate, cpu = measure(port, "/bare/read-body/v1/images", bare_body, auth, args.connections,
                                    args.seconds)
                body_rates.append(rate)
                body_cpu.append(cpu)
                rate, cpu = measure(port, "/v1/images", sightwire_body, auth, args.connections, args.seconds)
                sw_rates.append(rate)
                sw_cpu.append(cpu)
                print(f"round: bare {bare_rates[-1]:.1f} req/s ({bare_cpu[-1]:.2f} ms CPU/request), bare reading "
                      f"the body {body_rates[-1]:.1f} req/s ({body_cpu[-1]:.2f}), Sightwire {sw_rates[-1]:.1f} "
                      f"req/s ({sw_cpu[-1]:.2f})", flush=True)
            serve.delete("bare-ingest")
        finally:
            stack.stop()
            ray.shutdown()
            images.shutdown()
    bare, sightwire = median(bare_rates), median(sw_rates)
    summary = {
        "benchmark": "ingest",
        "ratio": round(sightwire / bare, 3),
        "target": TARGET,
        "ratio_cpu": round(median(bare_cpu) / median(sw_cpu), 3),
        "ratio_vs_bare_reading_body": round(sightwire / median(body_rates), 3),
        "cpu_ms_per_request": {"bare": round(median(bare_cpu), 2), "bare_reading_body": round(median(body_cpu), 2),
                               "sightwire": round(median(sw_cpu), 2)},
        "bare_reading_body_rps": round(median(body_rates), 1),
        "sightwire_rps": round(sightwire, 1),
        "bare_rps": round(bare, 1),
        "rounds": {"bare": [round(r, 1) for r in bare_rates], "bare_reading_body": [round(r, 1) for r in body_rates],
                   "sightwire": [round(r, 1) for r in sw_rates]},
        "connections": args.connections,
        "seconds": args.seconds,
        "processing": args.processing,
        "machine": machine(),
    }
    print(f"ratio (Sightwire / bare Serve endpoint, medians) = {summary['ratio']} (target >= {TARGET}); "
          f"per CPU-ms {summary['ratio_cpu']}; vs a bare endpoint that reads the body "
          f"{summary['ratio_vs_bare_reading_body']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
