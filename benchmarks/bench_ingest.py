"""``POST /v1/images`` requests/s vs a bare Serve FastAPI endpoint that answers 202.

Both run on the same local Ray, started by the stack as shipped (``LocalStack``: every detected
CPU), one after the other, driven by the same lean keep-alive HTTP load generator
(``benchmarks.loadgen``) with ``--connections`` connections. Each repeat is a fresh process and
Ray in one Serve mode (``Settings.serve_ingress``: ``haproxy``, the default, or ``proxy``, Serve's
Python proxy); with ``--serve-ingress both`` the two modes alternate (A B, B A, A B) for
``--repeats`` rounds and every figure is the median of its repeats, with min-max printed:

* bare: a Serve ingress deployment (same options as the API gateway: 0 CPUs, 256 ongoing
  requests) whose FastAPI route ``POST /v1/images`` answers 202 with a small JSON body without
  reading the request body (the limit as the SPEC words it), and a second route that reads and
  parses the JSON body first: Serve fetches a request body from its proxy with an extra actor
  call, which any endpoint that accepts an image pays; the ratio against it is printed too;
* Sightwire: the real stack (tiny models, private redis-server); every request is authenticated
  (hashed key lookup), validated (schema, registry, URL policy, metadata size) and written with
  its job in one Redis transaction before the 202.

The stack runs with its default settings, so the processor works the accepted jobs off meanwhile
(their images answer 404 on a loopback host, the cheapest real failure); ``--idle-processor``
holds it to one job at a time (``engine_max_in_flight=1``, not a shipped setting) to show
acceptance alone.
ratio = Sightwire / bare in the same Serve mode, the shipped mode's median; target >= 0.80. Each
round also records the CPU seconds of the whole
process tree (load generator, proxy, replicas, Redis, Ray) per request: ``ratio_cpu`` = bare CPU
per request / Sightwire CPU per request, which other load on a shared machine does not move.

    .venv/bin/python -m benchmarks.bench_ingest [--seconds 8] [--repeats 3] [--serve-ingress both] [--idle-processor]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import tempfile
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from benchmarks.common import (
    cpu_by_process,
    cpu_delta,
    create_api_key,
    interleaved,
    machine,
    run_child,
    spread,
    spread_of,
    start_not_found_host,
)
from benchmarks.loadgen import build_request, run_load
from core.settings import ServeIngress, Settings
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
            seconds: float) -> tuple[float, float, dict[str, float]]:
    """Requests/s, CPU milliseconds of the whole process tree per request, and the same split by
    process role (the API replica, the processor, Redis, HAProxy, this process...)."""
    def make(i: int) -> bytes:
        return build_request(HOST, port, path, body_for(i), headers)  # type: ignore[operator]

    before = cpu_by_process()
    result = asyncio.run(run_load(HOST, port, make, connections, seconds, warmup_s=0.0))
    used = cpu_delta(before, cpu_by_process())
    bad = {code: n for code, n in result.statuses.items() if code != 202}
    if bad:
        raise RuntimeError(f"non-202 answers: {bad}")
    if result.closed:
        print(f"{path}: {result.closed} connection(s) closed by the server, reopened", file=sys.stderr)
    per_request = {role: round(s * 1000 / result.requests, 3) for role, s in sorted(used.items())}
    return result.rate, sum(used.values()) * 1000 / result.requests, per_request


def trial(args: argparse.Namespace, ingress: ServeIngress) -> dict[str, float]:
    """One repeat in this process: a fresh Ray in ``ingress`` mode, the stack as shipped, the bare
    endpoint beside it; each of the three measured once after a warm-up."""
    images = start_not_found_host(HOST)
    image_base = f"http://{HOST}:{images.server_address[1]}"
    port = free_port()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            models="tiny", data_dir=Path(data_dir), allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
            serve_ingress=ingress,
            **({"engine_max_in_flight": 1, "engine_org_max_in_flight": 1} if args.idle_processor else {}),
        )
        stack = LocalStack(settings, host=HOST, port=port, embedded_redis=True).start()  # Ray as shipped
        try:
            key = create_api_key(stack.settings, "bench-ingest")
            auth = {"Authorization": f"Bearer {key}"}

            def body(i: int) -> bytes:
                return json.dumps({"url": f"{image_base}/{i}.jpg", "models": ["object_detection"],
                                   "metadata": {"listing": f"L-{i}"}}).encode()

            serve.run(BareIngest.bind(), name="bare-ingest", route_prefix="/bare")
            paths = {"bare": "/bare/v1/images", "bare_reading_body": "/bare/read-body/v1/images",
                     "sightwire": "/v1/images"}
            for path in paths.values():  # warm-up: connections, replicas, caches
                measure(port, path, body, auth, args.connections, 1.0)
            for name, path in paths.items():
                out[f"{name}_rps"], out[f"{name}_cpu_ms"], by_role = measure(
                    port, path, body, auth, args.connections, args.seconds)
            out.update({f"sightwire_cpu_ms[{role}]": ms for role, ms in by_role.items()})  # the last: Sightwire's
            serve.delete("bare-ingest")
        finally:
            stack.stop()
            images.shutdown()
    out["ratio"] = out["sightwire_rps"] / out["bare_rps"]
    out["ratio_vs_bare_reading_body"] = out["sightwire_rps"] / out["bare_reading_body_rps"]
    out["ratio_cpu"] = out["bare_cpu_ms"] / out["sightwire_cpu_ms"]
    return out


FIGURES = ("ratio", "ratio_vs_bare_reading_body", "ratio_cpu", "bare_rps", "bare_reading_body_rps", "sightwire_rps",
           "bare_cpu_ms", "bare_reading_body_cpu_ms", "sightwire_cpu_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per Serve mode (fresh Ray each)")
    parser.add_argument("--serve-ingress", default="both", choices=["both", *(m.value for m in ServeIngress)])
    parser.add_argument("--idle-processor", action="store_true", help="one job at a time (not as shipped)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one trial, JSON out
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"round": trial(args, ServeIngress(args.serve_ingress))}))
        return
    print(f"machine: {machine()}")
    modes = [m.value for m in ServeIngress] if args.serve_ingress == "both" else [args.serve_ingress]
    shipped = Settings().serve_ingress.value
    child_args = ["--seconds", str(args.seconds), "--connections", str(args.connections), "--child",
                  *(["--idle-processor"] if args.idle_processor else [])]
    runs = interleaved(modes, args.repeats,
                       lambda mode: run_child("benchmarks.bench_ingest", [*child_args, "--serve-ingress", mode]))
    per_mode = {mode: {k: spread_of([r["round"] for r in results], k) for k in FIGURES}
                for mode, results in runs.items()}
    for mode, results in runs.items():  # where Sightwire's CPU per request went, by process
        roles = sorted({k for r in results for k in r["round"] if k.startswith("sightwire_cpu_ms[")})
        split = {k[len("sightwire_cpu_ms["):-1]: spread([r["round"].get(k, 0.0) for r in results])["median"]
                 for k in roles}
        print(f"{mode}: Sightwire CPU ms per request by process (medians): {json.dumps(split)}")
    for mode, figures in per_mode.items():
        print(f"{mode}: " + ", ".join(f"{k} {v['median']} ({v['min']}-{v['max']})" for k, v in figures.items()))
    headline = per_mode.get(shipped, per_mode[modes[0]])
    summary = {
        "benchmark": "ingest",
        "ratio": headline["ratio"]["median"],
        "target": TARGET,
        "serve_ingress": shipped if shipped in per_mode else modes[0],
        "ratio_cpu": headline["ratio_cpu"]["median"],
        "by_serve_ingress": per_mode,
        "connections": args.connections,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "idle_processor": args.idle_processor,
        "machine": machine(),
    }
    if len(per_mode) == 2:
        summary["sightwire_rps_haproxy_over_proxy"] = round(
            per_mode["haproxy"]["sightwire_rps"]["median"] / per_mode["proxy"]["sightwire_rps"]["median"], 2)
    print(f"ratio (Sightwire / bare Serve endpoint under the same mode, {summary['serve_ingress']}, median of "
          f"{args.repeats}) = {summary['ratio']} (target >= {TARGET})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
