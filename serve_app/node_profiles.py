"""Locally built profiles (``tiny``, ``bench``) on a Ray cluster: built on every node, or refused.

Their checkpoints are made from configs on the machine that loads them (random weights, no
download), so every node that may run a model replica needs the build under
``SIGHTWIRE_MODELS_DIR``. ``serve_app:app`` calls :func:`prepare` before binding the app:

- connected to Ray (``serve deploy``/``serve run`` of a config file: the app is built by a task
  inside the cluster), one zero-CPU task per alive node builds the profile there; a node that
  cannot (read-only or full disk, a missing package) fails the deploy with its address and why;
- not connected (``serve run serve_app:app`` imports the app before it connects), it is built
  on this machine, which is where Ray runs it unless ``--address`` points elsewhere; the log
  line says so.

Nodes that join later (autoscaling) do not have it unless ``SIGHTWIRE_MODELS_DIR`` is on
storage every node mounts; the profiles are for trying Sightwire out, production registries
name downloadable checkpoints.
"""

from __future__ import annotations

import fcntl
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from core.registry import LOCAL_PROFILES
from core.settings import Settings

log = logging.getLogger("sightwire.profiles")

BUILD_TIMEOUT_S = 600.0


class ProfileUnavailable(RuntimeError):
    """A locally built profile could not be built where the models run."""


@contextmanager
def _build_lock(models_dir: Path, profile: str) -> Iterator[None]:
    """One build at a time per models folder: nodes on one machine (or one shared volume) share it."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{profile}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_here(models_dir: Path, profile: str) -> str:
    """Build ``profile`` under ``models_dir`` on this machine (idempotent); returns where."""
    from models.tiny import ensure_local_profile  # torch and transformers: only where models run

    try:
        with _build_lock(Path(models_dir).expanduser(), profile):
            root = ensure_local_profile(models_dir, profile)
    except (OSError, ImportError) as exc:
        raise ProfileUnavailable(
            f"the {profile!r} profile cannot be built in {models_dir} on {socket.gethostname()}: {exc}. "
            "Point SIGHTWIRE_MODELS_DIR at a writable directory, or use a registry whose checkpoints "
            "every node can load (SIGHTWIRE_MODELS=pretrained or a registry YAML path)."
        ) from exc
    return str(root)


@ray.remote(num_cpus=0, max_retries=0)
def _build_on_node(models_dir: str, profile: str) -> str:
    return build_here(Path(models_dir), profile)


def prepare(settings: Settings) -> list[str]:
    """Build the settings' profile where its models will run, if it is a locally built one.

    Returns the addresses of the nodes it was built on (empty for other registries)."""
    profile, models_dir = settings.models, Path(settings.models_dir).expanduser()
    if profile not in LOCAL_PROFILES:
        return []
    if not ray.is_initialized():
        build_here(models_dir, profile)
        log.warning("built the %r profile in %s on this machine only; where Ray runs replicas on other nodes too, "
                    "deploy the config file instead (`serve deploy cluster/serve_config.yaml` builds it on every "
                    "node)", profile, models_dir)
        return [socket.gethostname()]
    nodes = [node for node in ray.nodes() if node["Alive"]]
    builds = [
        _build_on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
        .remote(str(models_dir), profile)
        for node in nodes
    ]
    addresses = [node["NodeManagerAddress"] for node in nodes]
    for address, build in zip(addresses, builds, strict=True):
        try:
            ray.get(build, timeout=BUILD_TIMEOUT_S)
        except ray.exceptions.RayTaskError as exc:  # the build raised: its message says why
            raise ProfileUnavailable(f"node {address}: {exc.cause}") from None
        except ray.exceptions.RayError as exc:  # the node died, the build timed out
            raise ProfileUnavailable(f"node {address}: the {profile!r} profile was not built: {exc}") from None
    log.info("the %r profile is built in %s on %d node(s): %s", profile, models_dir, len(nodes), ", ".join(addresses))
    return addresses
