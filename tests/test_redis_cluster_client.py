"""Sightwire on a real Redis Cluster: ``REDIS_URL=redis+cluster://seed,seed,...``.

The client ``core.store.connect.redis_client`` builds, the store-safety check and the
finished-image listener, on three real ``redis-server`` masters (``tests/support/redis_cluster.py``).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, WatchError

from core.schemas import ImageRecord, ImageStatus
from core.settings import Settings
from core.store import Store
from core.store.connect import ClusterAddress, is_cluster_url, parse_cluster_url, redis_client
from core.store.safety import StoreMisconfigured, verify_store_config
from core.tokens import new_id
from serve_app.local import free_port
from serve_app.waiters import Waiters
from tests.support.redis_cluster import LocalRedisCluster

PUBLISH_SCRIPT = "return redis.call('PUBLISH', ARGV[1], ARGV[2])"  # as finalize.lua publishes


@pytest.fixture
async def cluster(redis_cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    client = redis_client(Settings(redis_url=redis_cluster.url, redis_max_connections=50))
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


def tag_on_each_master(redis_cluster: LocalRedisCluster) -> dict[int, str]:
    """One hash tag per master port whose slot that master serves."""
    tags: dict[int, str] = {}
    for n in range(1000):
        tags.setdefault(redis_cluster.master_of(f"{{t{n}}}"), f"{{t{n}}}")
        if len(tags) == len(redis_cluster.ports):
            return tags
    raise AssertionError(f"found masters {sorted(tags)} of {redis_cluster.ports}")


async def test_the_client_reaches_every_master(cluster: RedisCluster, redis_cluster: LocalRedisCluster) -> None:
    tags = tag_on_each_master(redis_cluster)
    assert sorted(tags) == sorted(redis_cluster.ports)
    run = new_id("k")
    for port, tag in tags.items():
        await cluster.set(f"{tag}{run}", str(port))
    for port, tag in tags.items():  # each key is in its own master, read there without the cluster client
        with redis.Redis(port=port) as node:
            assert node.get(f"{tag}{run}") == str(port).encode()
    assert {node.port for node in cluster.get_primaries()} == set(redis_cluster.ports)


async def test_one_seed_that_answers_is_enough(redis_cluster: LocalRedisCluster) -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{redis_cluster.ports[2]}"  # the first is down
    client = redis_client(Settings(redis_url=url))
    try:
        assert await client.ping()
        assert {node.port for node in client.get_primaries()} == set(redis_cluster.ports)
    finally:
        await client.aclose()


async def test_a_watched_transaction_on_one_tag_commits_and_sees_conflicts(cluster: RedisCluster) -> None:
    tag = f"{{{new_id('o')}}}"
    a, b = f"{tag}:a", f"{tag}:b"
    await cluster.set(a, 1)
    async with cluster.pipeline(transaction=True) as pipe:
        await pipe.watch(a, b)
        value = int(await pipe.get(a))
        pipe.multi()
        pipe.set(a, value + 10)
        pipe.incr(b)
        assert await pipe.execute() == [True, 1]
    assert await cluster.mget(a, b) == [b"11", b"1"]
    async with cluster.pipeline(transaction=True) as pipe:  # a write after WATCH aborts the EXEC
        await pipe.watch(a)
        await cluster.set(a, 99)
        pipe.multi()
        pipe.set(a, 0)
        with pytest.raises(WatchError):
            await pipe.execute()
    assert await cluster.get(a) == b"99"


async def test_a_transaction_over_two_tags_is_refused(cluster: RedisCluster) -> None:
    x, y = f"{{{new_id('x')}}}", f"{{{new_id('y')}}}"
    assert cluster.keyslot(x) != cluster.keyslot(y)
    with pytest.raises(RedisClusterException, match=r"same slot|same key slot|CROSSSLOT"):
        async with cluster.pipeline(transaction=True) as pipe:
            pipe.set(x, 1)
            pipe.set(y, 1)
            await pipe.execute()
    with pytest.raises(RedisClusterException, match=r"same key slot|CROSSSLOT"):
        async with cluster.pipeline(transaction=True) as pipe:
            await pipe.watch(x, y)
    assert await cluster.exists(x) + await cluster.exists(y) == 0


async def test_lua_scripts_on_keys_of_one_tag(cluster: RedisCluster, redis_cluster: LocalRedisCluster) -> None:
    both = cluster.register_script("return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}")
    for port, tag in tag_on_each_master(redis_cluster).items():  # EVALSHA, then a load, on each master
        run = new_id(tag)
        await cluster.set(f"{run}:a", "A")
        await cluster.set(f"{run}:b", str(port))
        assert await both(keys=[f"{run}:a", f"{run}:b"]) == [b"A", str(port).encode()]
        with redis.Redis(port=port) as node:
            assert node.script_exists(both.sha) == [True]
        assert await cluster.evalsha(both.sha, 2, f"{run}:a", f"{run}:b") == [b"A", str(port).encode()]
        assert await cluster.eval("return redis.call('GET', KEYS[1])", 1, f"{run}:b") == str(port).encode()
    with pytest.raises(RedisClusterException, match=r"same key slot|CROSSSLOT"):
        await both(keys=[f"{{{new_id('x')}}}", f"{{{new_id('y')}}}"])


def test_verify_store_config_checks_every_master(redis_cluster: LocalRedisCluster) -> None:
    settings = Settings(redis_url=redis_cluster.url)
    verify_store_config(settings)
    evicting = redis_cluster.ports[1]
    with redis.Redis(port=evicting) as node:
        node.config_set("maxmemory-policy", "allkeys-lru")
        try:
            with pytest.raises(StoreMisconfigured) as refused:
                verify_store_config(settings)
        finally:
            node.config_set("maxmemory-policy", "noeviction")
    message = str(refused.value)
    assert f"Redis node 127.0.0.1:{evicting} has maxmemory-policy allkeys-lru" in message
    assert "noeviction" in message
    assert all(f":{port} " not in message for port in redis_cluster.ports if port != evicting)
    verify_store_config(settings)  # set back


def pubsub_node(redis_cluster: LocalRedisCluster, channel: str) -> list[int]:
    """The ports of the nodes holding a subscription to ``channel`` (NUMSUB counts local ones)."""
    ports = []
    for port in redis_cluster.ports:
        with redis.Redis(port=port) as node:
            if dict(node.pubsub_numsub(channel)).get(channel.encode()):
                ports.append(port)
    return ports


async def subscribed(redis_cluster: LocalRedisCluster, channel: str, not_on: int | None = None) -> int:
    deadline = time.monotonic() + 5
    while not (ports := [port for port in pubsub_node(redis_cluster, channel) if port != not_on]):
        assert time.monotonic() < deadline, f"no subscription to {channel} on {redis_cluster.ports}"
        await asyncio.sleep(0.02)
    assert len(ports) == 1
    return ports[0]


class Image:
    """An image, queued until a test sets ``status``; ``read`` is what the waiter reads it with."""

    def __init__(self) -> None:
        self.id = new_id("img")
        self.status = ImageStatus.QUEUED
        self.reads = 0
        self.read_once = asyncio.Event()

    async def read(self) -> ImageRecord:
        self.reads += 1
        self.read_once.set()
        now = datetime.now(UTC)
        return ImageRecord(id=self.id, status=self.status, url="http://example.com/a.png", models={},
                           sequence=self.reads, created_at=now, updated_at=now)


async def woken(waiters: Waiters, image: Image) -> float:
    """Seconds until ``waiters`` returns ``image`` finished (10 s timeout: it would return queued
    then only if nothing woke it)."""
    started = time.monotonic()
    record = await waiters.wait(image.id, image.read, timeout_s=10)
    assert record is not None and record.status is ImageStatus.COMPLETE
    return time.monotonic() - started


async def finish_and_wait(waiters: Waiters, image: Image, publish: Callable[[], Awaitable[object]]) -> float:
    """Finish ``image`` once a waiter has read it queued, ``publish`` its id; the waiter's time."""
    waiting = asyncio.create_task(woken(waiters, image))
    await image.read_once.wait()  # the waiter has registered and read the queued record
    image.status = ImageStatus.COMPLETE
    await publish()  # its count is the receiving node's subscribers only, 0 on the others
    return await waiting


async def published(cluster: RedisCluster, waiters: Waiters, channel: str) -> float:
    """A fresh image finished and published through the cluster client; the waiter's time."""
    image = Image()
    return await finish_and_wait(waiters, image, lambda: cluster.publish(channel, image.id))


async def test_the_waiters_hear_a_publish_from_every_master(
    cluster: RedisCluster, redis_cluster: LocalRedisCluster
) -> None:
    channel = new_id("finished")
    waiters = Waiters(cluster, channel)
    async with waiters.running():
        listening = await subscribed(redis_cluster, channel)
        assert await published(cluster, waiters, channel) < 5
        for port, tag in tag_on_each_master(redis_cluster).items():  # as finalize.lua, on the image's master
            image = Image()
            key = f"{tag}{image.id}"
            publish = functools.partial(cluster.eval, PUBLISH_SCRIPT, 1, key, channel, image.id)
            assert await finish_and_wait(waiters, image, publish) < 5, port
        assert pubsub_node(redis_cluster, channel) == [listening]
    assert pubsub_node(redis_cluster, channel) == []  # the subscription ends with the block


async def test_the_waiters_resubscribe_on_another_node_after_a_drop(
    cluster: RedisCluster, redis_cluster: LocalRedisCluster
) -> None:
    channel = new_id("finished")
    waiters = Waiters(cluster, channel)
    async with waiters.running():
        first = await subscribed(redis_cluster, channel)
        with redis.Redis(port=first) as node:
            assert node.client_kill_filter(_type="pubsub") >= 1
        second = await subscribed(redis_cluster, channel, not_on=first)
        assert second != first
        assert await published(cluster, waiters, channel) < 5


def test_the_store_uses_a_cluster_client_for_a_cluster_url(redis_cluster: LocalRedisCluster) -> None:
    store = Store.from_settings(Settings(redis_url=redis_cluster.url, redis_max_connections=7))
    assert isinstance(store.redis, RedisCluster)
    assert store.redis.connection_kwargs["max_connections"] == 7
    assert store.redis.retry.get_retries() == 6
    assert {(node.host, node.port) for node in store.redis.startup_nodes} == {
        ("127.0.0.1", port) for port in redis_cluster.ports}


def test_a_single_redis_keeps_its_blocking_pool() -> None:
    client = redis_client(Settings(redis_url="redis://127.0.0.1:1/0", redis_max_connections=9,
                                   redis_pool_timeout_s=3.5))
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (9, 3.5)
    assert pool.connection_kwargs["health_check_interval"] == 10
    retry = pool.connection_kwargs["retry"]
    assert retry.get_retries() == 6 and isinstance(retry._backoff, ExponentialWithJitterBackoff)
    assert not client.get_encoder().decode_responses


def test_cluster_urls_are_parsed() -> None:
    assert parse_cluster_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001") == ClusterAddress(
        (("127.0.0.1", 7000), ("127.0.0.1", 7001)))
    assert parse_cluster_url("rediss+cluster://app:p%40ss@redis-0.example:7000,[::1],redis-2/0") == ClusterAddress(
        (("redis-0.example", 7000), ("::1", 6379), ("redis-2", 6379)), "app", "p@ss", ssl=True)
    assert parse_cluster_url("redis+cluster://:secret@h:1/").password == "secret"
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("REDISS+CLUSTER://h:1")
    assert not any(map(is_cluster_url, ["redis://h:1/0", "rediss://h:1", "unix:///tmp/r.sock"]))


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+cluster://", "names no seed node"),
    ("redis+cluster://user:pw@/0", "names no seed node"),
    ("redis+cluster://127.0.0.1:7000,,127.0.0.1:7001", "empty seed node"),
    ("redis+cluster://127.0.0.1:7000,", "empty seed node"),
    ("redis+cluster://127.0.0.1:seven", "malformed seed node '127.0.0.1:seven'"),
    ("redis+cluster://127.0.0.1:70000", "malformed seed node '127.0.0.1:70000'"),
    ("redis+cluster://127.0.0.1:0", "on port 0"),
    ("redis+cluster://:7000", "malformed seed node ':7000'"),
    ("redis+cluster://[::1:7000", "malformed"),
    ("redis+cluster://127.0.0.1:7000/2", "selects database '2'"),
    ("redis+cluster://127.0.0.1:7000?ssl_cert_reqs=none", "options after"),
    ("redis://127.0.0.1:7000", "not a Redis Cluster URL"),
])
def test_malformed_cluster_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_cluster_url(url)


def test_a_refused_url_hides_its_password() -> None:
    with pytest.raises(ValueError, match="malformed seed node") as refused:
        redis_client(Settings(redis_url="redis+cluster://app:hunter2@127.0.0.1:x"))
    assert "hunter2" not in str(refused.value) and "app:***@" in str(refused.value)
