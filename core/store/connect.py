"""The store's Redis client for ``REDIS_URL``: one Redis, or a Redis Cluster named by its seeds.

``redis://`` / ``rediss://`` (and ``unix://``) name one Redis, reached through one blocking pool.
``redis+cluster://`` / ``rediss+cluster://`` name a Redis Cluster by one or more seed nodes::

    redis+cluster://[user:password@]host:port[,host:port...][/0]

The client asks a seed for the cluster's layout and routes each command to the master of its
key's slot, so one seed that answers is enough. redis-py has no cluster scheme of its own
(``RedisCluster.from_url`` takes a single ``redis://`` host), hence this one: a list of seeds
still starts when one of them is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from core.settings import Settings

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme: TLS
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class ClusterAddress:
    """What a cluster URL names: its seed nodes, credentials and whether to use TLS."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def store_retry() -> Retry:
    """The store's retry policy on connection errors.

    After a Redis restart every pooled connection is stale, and ``from_url`` alone retries
    nothing (redis-py 8), so each would fail one command first. The bound (~1.5 s) also bounds
    how long the API takes to answer 503 while Redis is down.
    """
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 6)


def redis_client(settings: Settings) -> Redis | RedisCluster:
    """The asyncio client of ``settings.redis_url``: a ``RedisCluster`` for a cluster URL."""
    if is_cluster_url(settings.redis_url):
        return cluster_client(parse_cluster_url(settings.redis_url), settings)
    # A blocking pool of a set size: redis-py 8's default pool raises MaxConnectionsError at
    # its 101st connection, which failed jobs (and their retries) under a backlog. With every
    # pooled connection busy a command waits up to redis_pool_timeout_s for one.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s, health_check_interval=10, retry=store_retry(),
    )
    return Redis.from_pool(pool)


def cluster_client(address: ClusterAddress, settings: Settings) -> RedisCluster:
    """A ``RedisCluster`` over ``address``'s seeds.

    redis-py 8.1's cluster client keeps a pool per node of ``max_connections`` that does not
    block: past it a command fails with ``MaxConnectionsError`` (``redis_pool_timeout_s`` has no
    counterpart). Its ``retry`` sets only how many times a command is retried after a
    connection error or a cluster change (each time on a refreshed layout), not the backoff.
    """
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
        username=address.username, password=address.password, ssl=address.ssl,
        max_connections=settings.redis_max_connections, retry=store_retry(),
        health_check_interval=10, decode_responses=False,
    )


def parse_cluster_url(url: str) -> ClusterAddress:
    """The seeds and credentials of a cluster URL; ``ValueError`` saying what is wrong."""
    shown = _redacted(url)
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ValueError(f"malformed Redis Cluster URL {shown!r}: {error}") from None
    if parts.scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (scheme redis+cluster:// or rediss+cluster://): {shown!r}")
    _check_rest(parts, shown)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise ValueError(f"Redis Cluster URL {shown!r} names no seed node (host:port after the scheme)")
    seeds = tuple(_seed(item, shown) for item in hosts.split(","))
    username, password = _credentials(userinfo)
    return ClusterAddress(seeds, username, password, ssl=CLUSTER_SCHEMES[parts.scheme.lower()])


def _check_rest(parts: SplitResult, shown: str) -> None:
    """A cluster has only database 0, and its options are not read from the URL."""
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"Redis Cluster URL {shown!r} selects database {parts.path.lstrip('/')!r}: "
                         "a Redis Cluster has only database 0")
    if parts.query or parts.fragment:
        raise ValueError(f"Redis Cluster URL {shown!r} has options after '?' or '#', which Sightwire "
                         "does not read for a cluster")


def _seed(item: str, shown: str) -> tuple[str, int]:
    """One ``host[:port]`` of the seed list (``[v6]:port`` for IPv6)."""
    if not item.strip():
        raise ValueError(f"Redis Cluster URL {shown!r} has an empty seed node (two commas, or a trailing one)")
    try:
        node = urlsplit(f"//{item}")
        host, port = node.hostname, node.port
    except ValueError:
        raise ValueError(f"Redis Cluster URL {shown!r} has a malformed seed node {item!r} "
                         "(expected host:port, the port a number 1-65535)") from None
    if not host or node.username is not None or node.password is not None:
        raise ValueError(f"Redis Cluster URL {shown!r} has a malformed seed node {item!r} (expected host:port)")
    if port == 0:
        raise ValueError(f"Redis Cluster URL {shown!r} has seed node {item!r} on port 0")
    return host, port or DEFAULT_PORT


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    """``user:password`` as redis-py's ``parse_url`` reads it (percent-decoded; empty is none)."""
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, (unquote(password) or None) if colon else None


def _redacted(url: str) -> str:
    """``url`` with its password hidden, for error messages."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, userinfo = head.partition("://")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{tail}"
