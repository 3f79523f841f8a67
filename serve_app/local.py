"""Local processes for one-machine runs: a private ``redis-server``, free ports, and the file
through which a running ``sightwire serve`` tells this machine's other commands its Redis.

Used by ``sightwire serve`` when ``REDIS_URL`` is unset, by the demo and by the tests; light to
import (no Ray, no torch), so the store commands of the CLI start in a second.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from core.settings import AppendFsync, Settings

RUNTIME_FILE = "serve.json"


def runtime_file(settings: Settings) -> Path:
    """Where ``sightwire serve`` writes its Redis URL and address while it runs."""
    return Path(settings.data_dir).expanduser() / RUNTIME_FILE


# Ports ``free_port`` hands out: above Ray's worker ports (10002-19999) and below the kernel's
# ephemeral range, so no outgoing connection, and no server that binds port 0, can be given one
# between the moment it is chosen and the moment its server binds it.
QUIET_PORTS_FROM = 20_000


def _ephemeral_from() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A TCP port free on every interface now, outside the ranges the kernel and Ray hand out
    on their own (``QUIET_PORTS_FROM``). A port the kernel picked (bind to port 0) is one it may
    give the next process that asks: HAProxy, told its metrics port before Ray started its
    workers, once found it taken by one of them."""
    top = _ephemeral_from()
    while True:
        port = random.randrange(QUIET_PORTS_FROM, top)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port


class RedisServer:
    """A private ``redis-server`` on a free loopback port, in its own directory: AOF on, fsynced
    as ``appendfsync`` says, and never evicting (``core.store.safety`` refuses anything else)."""

    def __init__(
        self, directory: Path | None = None, port: int | None = None, appendfsync: AppendFsync = AppendFsync.EVERYSEC
    ) -> None:
        self.port = port or free_port()
        self.appendfsync = AppendFsync(appendfsync)
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="sightwire-redis-")
        self.directory = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arguments(self) -> list[str]:
        """``redis-server``'s command line after the binary."""
        return ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", self.appendfsync.value, "--save", "",
                "--maxmemory-policy", "noeviction", "--protected-mode", "yes"]

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; `make test` or `make demo` installs it")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [binary, *self.arguments()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self, *, crash: bool = False) -> None:
        """A clean shutdown (SIGTERM: Redis writes out its AOF), or with ``crash`` a SIGKILL."""
        if self._process is not None and self._process.poll() is None:
            if crash:
                self._process.kill()
            else:
                self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None

    def restart(self, *, crash: bool = False) -> None:
        self.stop(crash=crash)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
