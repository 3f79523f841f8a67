"""A real Redis Cluster for tests: three ``redis-server`` masters on loopback, no replicas.

Each master is a ``serve_app.local.RedisServer`` (AOF on, ``noeviction``, its own directory)
with cluster mode on; ``redis-cli --cluster create`` splits the 16384 slots between them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from serve_app.local import RedisServer, free_port

STOP_TIMEOUT_S = 10.0


def cluster_ports() -> tuple[int, int]:
    """A client port and a cluster-bus port, distinct and free on loopback now (never 6379).

    The bus port is passed explicitly (``--cluster-port``): Redis's default, client port + 10000,
    is past 65535 for much of Linux's ephemeral range, and nobody checked it was free.
    """
    port = free_port()
    while (bus := free_port()) == port:
        pass
    return port, bus


class ClusterNodeServer(RedisServer):
    """One master of the cluster: a private ``redis-server`` in cluster mode."""

    def __init__(self) -> None:
        port, self.bus_port = cluster_ports()
        super().__init__(port=port)

    def arguments(self) -> list[str]:
        return [*super().arguments(), "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                "--cluster-config-file", str(self.directory / f"nodes-{self.port}.conf"),
                "--cluster-node-timeout", "5000"]

    def stop(self, *, crash: bool = False) -> None:
        """SIGTERM (or with ``crash`` SIGKILL); a process still alive after the timeout is killed."""
        process = self._process
        if process is not None and process.poll() is None:
            if crash:
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None


class LocalRedisCluster:
    """Three cluster masters on free loopback ports, joined into one cluster; a context manager."""

    def __init__(self, masters: int = 3) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.nodes = [ClusterNodeServer() for _ in range(masters)]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming every master as a seed (``core.store.connect``)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout_s: float = 20.0) -> LocalRedisCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server, which `make test` installs)")
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout_s, check=False,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed ({create.returncode}):\n"
                                   f"{create.stdout}{create.stderr}")
            self._wait_ok(time.monotonic() + timeout_s)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _wait_ok(self, deadline: float) -> None:
        """Until every node says ``cluster_state:ok`` and knows every other node."""
        waiting = list(self.nodes)
        last: dict[int, object] = {}
        while waiting:
            for node in list(waiting):
                with redis.Redis(port=node.port, socket_timeout=2) as client:
                    info = client.cluster("info")
                last[node.port] = {key: info.get(key) for key in ("cluster_state", "cluster_known_nodes")}
                if info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == len(self.nodes):
                    waiting.remove(node)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster on ports {self.ports} not ok in time: "
                                   f"{ {node.port: last.get(node.port) for node in waiting} }")
            if waiting:
                time.sleep(0.05)

    def master_of(self, key: str | bytes) -> int:
        """The port of the master serving ``key``'s slot, as the cluster itself answers."""
        with redis.Redis(port=self.ports[0], socket_timeout=2) as client:
            slot = int(client.cluster("keyslot", key))
            for start, end, (_host, port, *_rest), *_replicas in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(port)
        raise LookupError(f"no master serves slot {slot}")

    def directories(self) -> list[Path]:
        return [node.directory for node in self.nodes]

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
