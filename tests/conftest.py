"""Session-wide real services: one private redis-server, loopback HTTP servers, one Ray."""

from __future__ import annotations

import io
import ipaddress
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from PIL import Image

from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from serve_app.local import RedisServer
from tests.support.servers import ImageHost, WebhookReceiver

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


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
def settings(redis_server: RedisServer) -> Settings:
    """Fast settings for tests: loopback allowed, retries in fractions of a second."""
    return Settings(
        redis_url=redis_server.url,
        key_prefix="swtest",
        allow_private_cidrs=LOOPBACK,
        retry_schedule_s=(0.0, 0.3, 0.6, 1.0, 1.0),
        retry_jitter=0.0,
        visibility_timeout_s=5.0,
        delivery_lease_s=5.0,
        notifier_poll_s=0.1,
        webhook_timeout_s=2.0,
        fetch_timeout_s=5.0,
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    store = Store.from_settings(settings)
    yield store
    await store.close()


@pytest.fixture
def org() -> str:
    return new_id("org")


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost().start()
    yield host
    host.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()
