"""How fast ``POST /v1/groups`` accepts 10,000 images, and whether the API replica's memory
stays flat with group size (SPEC §8: accepted in <= 0.5 s; peak memory the same for 1k and 10k,
within 2 MB).

Starts the whole stack as shipped (tiny models, private Redis, every setting at its default:
the 10,000-image body is read as a stream within ``max_group_body_bytes``), then posts groups of
1,000 and 10,000 images, interleaved (1k, 10k, 10k, 1k, ...), while sampling the API replica's
resident memory every 3 ms. The image URLs are 100 characters on a loopback host. Each group is
canceled once accepted (its bulk run stops within 0.5 s) and the stack given ``SETTLE_S`` before
the next, so every acceptance is measured on an idle stack. Figures are medians of ``REPEATS``
with their spread. Last line: one JSON object with ``accept_s`` (10,000 images), ``ratio``
(target / accept_s) and the RSS growth of each size.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_group_accept.py
"""

from __future__ import annotations

import ipaddress
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    bearer,
    create_api_key,
    interleaved,
    machine,
    replica_pids,
    rss_mb,
    spread,
    start_not_found_host,
)
from core.settings import Settings
from serve_app.local import free_port
from serve_app.stack import LocalStack

TARGET_S = 0.5
TARGET_RSS_MB = 2.0
SIZES = (1_000, 10_000)
REPEATS = 5
URL_LENGTH = 100
SETTLE_S = 5.0


def api_replica_pid() -> int:
    pids = replica_pids("ApiGateway")
    if not pids:
        raise RuntimeError("API replica process not found")
    return pids[0]


def post_group(client: httpx.Client, key: str, size: int, image_base: str, pid: int) -> dict[str, float]:
    """Seconds to accept a group of ``size`` and the replica's peak RSS growth meanwhile (MB);
    then the group is canceled and the stack left to settle."""
    pad = "p" * (URL_LENGTH - len(image_base) - 12)
    body = {"images": [{"url": f"{image_base}/{pad}/{i:05d}.jpg"} for i in range(size)], "models": ["object_detection"]}
    before = rss_mb(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.003)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    response = client.post("/v1/groups", json=body, headers=bearer(key))
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    response.raise_for_status()
    assert response.json()["counts"]["total"] == size
    cancel_and_settle(client, key, response.json()["id"])
    return {"accept_s": elapsed, "rss_growth_mb": peak - before}


def cancel_and_settle(client: httpx.Client, key: str, group_id: str, timeout_s: float = 120) -> None:
    """Stop the group's bulk run, wait for it to end, then give the pipeline SETTLE_S to tear
    its actors down: the next acceptance then has the two cores to itself."""
    client.post(f"/v1/groups/{group_id}/cancel", headers=bearer(key)).raise_for_status()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        group = client.get(f"/v1/groups/{group_id}", headers=bearer(key)).json()
        if group["status"] not in ("queued", "processing"):
            time.sleep(SETTLE_S)
            return
        time.sleep(0.5)
    raise TimeoutError(f"group {group_id} still {group['status']} after {timeout_s} s: {group['counts']}")


def main() -> None:
    images = start_not_found_host()
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            models="tiny", data_dir=Path(data_dir), allow_private_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        stack = LocalStack(settings, port=free_port(), embedded_redis=True).start()
        try:
            key = create_api_key(stack.settings, "bench")
            pid = api_replica_pid()
            base = f"http://127.0.0.1:{images.server_address[1]}"
            with httpx.Client(base_url=stack.url, timeout=60) as client:
                post_group(client, key, 100, base, pid)  # warm-up
                runs = interleaved([str(n) for n in SIZES], REPEATS,
                                   lambda n: {"round": post_group(client, key, int(n), base, pid)})
        finally:
            stack.stop()
            images.shutdown()
    figures = {n: {k: spread([r["round"][k] for r in runs[str(n)]]) for k in ("accept_s", "rss_growth_mb")}
               for n in SIZES}
    for n in SIZES:
        print(f"{n:>6} images: accepted in {figures[n]['accept_s']} s; "
              f"API replica peak RSS growth {figures[n]['rss_growth_mb']} MB")
    accept_s = figures[SIZES[-1]]["accept_s"]["median"]
    growth = {n: figures[n]["rss_growth_mb"]["median"] for n in SIZES}
    summary = {
        "benchmark": "group_accept",
        "accept_s": accept_s,
        "accept_s_spread": figures[SIZES[-1]]["accept_s"],
        "target_s": TARGET_S,
        "ratio": round(TARGET_S / accept_s, 2),
        "target": 1.0,
        "rss_growth_mb_1k": growth[SIZES[0]],
        "rss_growth_mb_10k": growth[SIZES[1]],
        "rss_growth_difference_mb": round(growth[SIZES[1]] - growth[SIZES[0]], 2),
        "target_rss_difference_mb": TARGET_RSS_MB,
        "machine": machine(),
    }
    print(f"ratio (target / measured) = {summary['ratio']} (>= 1.0 meets the {TARGET_S} s target)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
