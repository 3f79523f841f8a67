"""A lean HTTP/1.1 load generator: keep-alive connections, pre-built requests, no client library.

On a 2-CPU machine the client shares the CPUs with the server it measures; a client that spends
little CPU per request (no header objects, no per-request parsing beyond the status line and
``content-length``) leaves the measured server as much of the machine as possible, and costs the
same whichever server it drives, so two servers are compared fairly.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    closed: int = 0  # connections the server closed before answering (reopened; the request is not counted)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def run_load(host: str, port: int, make_request: Callable[[int], bytes], connections: int,
                   seconds: float, warmup_s: float = 1.0) -> LoadResult:
    """``connections`` keep-alive connections, each sending ``make_request(i)`` back to back for
    ``warmup_s`` (not counted) and then ``seconds``."""
    result = LoadResult(requests=0, seconds=seconds)
    counter = iter(range(1 << 62))
    start = time.perf_counter() + warmup_s
    stop = start + seconds

    async def connection() -> None:
        """One keep-alive connection; one the server closes (HAProxy drops its idle keep-alive
        connections when it reloads for a new deployment) is reopened, as a client pool does."""
        while time.perf_counter() < stop:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while (now := time.perf_counter()) < stop:
                    status = await _exchange(reader, writer, make_request(next(counter)))
                    if now >= start:
                        result.requests += 1
                        result.statuses[status] += 1
                        result.latencies_s.append(time.perf_counter() - now)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                result.closed += 1
            finally:
                writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    result.seconds = time.perf_counter() - start  # requests in flight at ``stop`` finished since
    return result
