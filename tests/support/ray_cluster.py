"""A real multi-process Ray cluster on this machine: started with ``ray start``, stopped by its own processes.

Each node is one ``ray start --block`` in a new session (``setsid``): every process Ray starts for
that node (GCS, raylet, dashboard, agents, workers) inherits the session id, so the cluster is
stopped by terminating exactly the processes of its sessions (SIGTERM, then SIGKILL for what
outlives a short grace) — never ``ray stop``, which stops every Ray on the machine. All ports are
free ones (never 6379), the temp dir is private (its ``ray_current_cluster`` file stays there, so
no other ``ray.init`` can join this cluster), and token authentication is on with a token of
this cluster's own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from serve_app.local import free_port

BIN = Path(sys.executable).parent
# Ports Ray takes by default when not told otherwise (autoscaler and dashboard metrics, the
# dashboard, the client server, Serve's HTTP): never handed to a cluster for anything else.
RAY_DEFAULT_PORTS = frozenset({44217, 44227, 8265, 10001, 8000, 6379})


@dataclass
class Ports:
    """Free loopback ports for one cluster, none handed out twice (``free_port`` alone may give
    the same port to two calls in a row, and two of a node's servers then fight over it)."""

    taken: set[int] = field(default_factory=set)

    def take(self) -> int:
        while (port := free_port()) in self.taken or port in RAY_DEFAULT_PORTS:
            pass
        self.taken.add(port)
        return port
STOP_GRACE_S = 5.0


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def session(self) -> int:
        return self.process.pid  # start_new_session: the node's `ray start` leads its session


@dataclass
class RayCluster:
    """``start()`` a head (with the dashboard, for ``serve deploy``) and ``workers`` worker nodes."""

    workers: int = 1
    cpus_per_node: int = 2
    head_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="swcl")))  # short: socket paths
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ports = Ports()
        self.gcs_port = self.ports.take()
        self.dashboard_port = self.ports.take()
        # the head's own metrics servers, on ports of this cluster's rather than Ray's fixed ones
        self.env = {"AUTOSCALER_METRIC_PORT": str(self.ports.take()),
                    "DASHBOARD_METRIC_PORT": str(self.ports.take()), **self.env}

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def process_env(self) -> dict[str, str]:
        """The environment of this cluster's processes and of the CLIs that talk to it.

        No PYTHONPATH and a working directory outside the repository: the application's code
        reaches the workers only through the runtime_env it is deployed with. No ``RAY_SERVE_*``
        either: those of the session's Ray (its HAProxy files and ports, ``serve_app.serve_env``)
        would collide; a cluster Sightwire did not start runs Serve as its nodes were set up."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "RAY_ADDRESS") and not k.startswith("RAY_SERVE_")}
        env.update(RAY_TMPDIR=str(self.temp_dir), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_USAGE_STATS_ENABLED="0", **self.env)
        return env

    def _node_args(self) -> list[str]:
        return [
            "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus_per_node}", "--num-gpus=0",
            "--object-store-memory=100000000", f"--node-manager-port={self.ports.take()}",
            f"--object-manager-port={self.ports.take()}", f"--dashboard-agent-listen-port={self.ports.take()}",
            f"--dashboard-agent-grpc-port={self.ports.take()}", f"--metrics-export-port={self.ports.take()}",
            f"--runtime-env-agent-port={self.ports.take()}",
        ]

    def _start_node(self, name: str, args: list[str]) -> None:
        log = self.temp_dir / f"{name}.out"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(BIN / "ray"), "start", *args, *self._node_args()], env=self.process_env(),
                cwd=self.temp_dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.nodes.append(Node(process, log))

    def start(self, timeout_s: float = 120.0) -> RayCluster:
        self._start_node("head", [
            "--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp_dir}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={self.ports.take()}", *self.head_args,
        ])
        deadline = time.monotonic() + timeout_s
        self.wait_for_nodes(1, deadline)
        for index in range(self.workers):
            self._start_node(f"worker{index}", [f"--address={self.gcs_address}"])
        self.wait_for_nodes(1 + self.workers, deadline)
        return self

    def alive_nodes(self) -> list[dict[str, object]]:
        response = httpx.get(f"{self.dashboard_url}/api/v0/nodes", timeout=5,
                             headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return [node for node in response.json()["data"]["result"]["result"] if node["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, deadline: float) -> None:
        last = "no answer"
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"`ray start` exited ({node.process.returncode}):\n{self.output(node)}")
            try:
                alive = len(self.alive_nodes())
                if alive >= count:
                    return
                last = f"{alive} node(s) alive"
            except (httpx.HTTPError, KeyError) as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise RuntimeError(f"the cluster did not reach {count} node(s): {last}")

    @staticmethod
    def output(node: Node) -> str:
        return node.log.read_text(errors="replace")[-4000:]

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster's sessions (the nodes' `ray start` and all they started)."""
        sessions = {node.session for node in self.nodes}
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(process.pid) in sessions and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        return found

    def node_of(self, process: psutil.Process) -> int:
        """Which node (0: the head) started ``process``."""
        return [node.session for node in self.nodes].index(os.getsid(process.pid))

    def stop(self) -> None:
        """SIGTERM every process of the cluster's sessions at once, then SIGKILL what outlives the grace."""
        for sig, grace_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            processes = self.processes()
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(sig)
            psutil.wait_procs(processes, timeout=grace_s)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(5)  # reap our own children
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
