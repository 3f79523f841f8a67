"""Session-wide real services: one private redis-server, loopback HTTP servers, one Ray."""

from __future__ import annotations

import io
import ipaddress
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from redis.asyncio import Redis

from core.settings import RAY_NAMESPACE, Settings
from core.store import Store
from core.store.fair_queue import QueueKeys
from core.tokens import new_id
from models.tiny import ensure_tiny_profile
from serve_app.local import RedisServer, free_port
from serve_app.serve_env import apply_serve_env
from tests.support.engine import CountingHost
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.servers import ImageHost, WebhookReceiver

if TYPE_CHECKING:
    from serve_app.stack import LocalStack

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start a Ray of their own run first, while the session's Ray and stack do not
    exist yet: on two cores the idle stack's loops (pollers, health checks, HAProxy) take CPU
    from them (the autoscaling test took 103 s alone and 130-146 s late in the suite)."""
    items.sort(key=lambda item: item.get_closest_marker("own_ray") is None)


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def quiet_redis() -> Iterator[RedisServer]:
    """A redis-server no stack or loop uses, for tests that count the commands of one step
    (``tests.support.commands``): commandstats count every client of a server, and the session's
    is shared with the stack's loops (a claim or renew landing inside a count failed it)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A real three-master Redis Cluster on loopback (``redis+cluster://`` in ``.url``)."""
    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def settings(redis_server: RedisServer) -> Settings:
    """Fast settings for tests: loopback allowed, retries in fractions of a second."""
    return Settings(
        redis_url=redis_server.url,
        key_prefix="swtest",
        allow_private_cidrs=LOOPBACK,
        retry_schedule_s=(0.0, 0.3, 0.6, 1.0, 1.0),
        retry_jitter=0.0,
        job_lease_s=3.0,
        job_retry_delay_s=0.3,
        delivery_lease_s=5.0,
        notifier_poll_s=0.1,
        webhook_timeout_s=2.0,
        fetch_timeout_s=5.0,
        fetch_retry_backoff_s=0.05,
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    store = Store.from_settings(settings)
    yield store
    await store.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A plain client of the settings' redis-server (the session's unless a module moves its
    settings), for store parts tested without ``Store``."""
    # Socket timeouts: a reply that never comes fails the test with a traceback naming the
    # command, instead of a silent hang until pytest-timeout (longer than any BLPOP of the tests).
    client = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
def queue_keys() -> QueueKeys:
    """A fresh fair queue of its own: nothing another test queued is visible."""
    return QueueKeys(prefix=new_id("swq"), queue="online")


@pytest.fixture
def org() -> str:
    return new_id("org")


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost().start()
    yield host
    host.stop()


@pytest.fixture
def counting_host() -> Iterator[CountingHost]:
    """An image host that counts its requests per path: how many fetches the engine made."""
    host = CountingHost()
    host.start()
    yield host
    host.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny profile, built once per session from configs (random weights, no network)."""
    directory = tmp_path_factory.mktemp("models")
    ensure_tiny_profile(directory)
    return directory


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session, with explicit logical CPUs (the machine has 2)."""
    if not ray.is_initialized():
        # address="local": always a private Ray, never one another session on this machine
        # started (ray.init would otherwise join the cluster of /tmp/ray/ray_current_cluster).
        # the shipped Serve mode (serve_app/serve_env.py), as LocalStack applies it
        apply_serve_env(Settings())
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 namespace=RAY_NAMESPACE)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def stack(settings: Settings, tiny_models_dir: Path, ray_session: None) -> Iterator[LocalStack]:
    """The whole application on Serve, with the tiny models, on a free port."""
    from serve_app.stack import LocalStack
    stack_settings = settings.model_copy(
        update={"key_prefix": "swstack", "models": "tiny", "models_dir": tiny_models_dir, "bulk_threshold": 8,
                "data_dir": tiny_models_dir / "data"}
    )
    running = LocalStack(stack_settings, port=free_port()).start()
    yield running
    running.stop()


@pytest.fixture
async def group_store(settings: Settings) -> AsyncIterator[Store]:
    """A store on a key prefix of its own, with group progress throttled to a minute (so a test
    sees the announcements it causes, not a timer's)."""
    update = {"key_prefix": new_id("g"), "group_progress_interval_s": 60}
    store = Store.from_settings(settings.model_copy(update=update))
    yield store
    await store.close()


@pytest.fixture
async def api(stack: LocalStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        yield client


@pytest.fixture
async def stack_store(stack: LocalStack) -> AsyncIterator[Store]:
    store = Store.from_settings(stack.settings)
    yield store
    await store.close()


@pytest.fixture
async def api_key(stack_store: Store, org: str) -> str:
    return await stack_store.accounts.create_api_key(org)
