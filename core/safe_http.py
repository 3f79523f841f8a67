"""An httpx client whose every TCP connection goes through the URL policy.

The check lives in the network backend, at ``connect_tcp``: the hostname is resolved there,
each address is checked, and the socket connects to exactly the checked address. URLs keep
their hostnames, so connection pooling, ``Host``, SNI and certificate checks stay correct, and
every redirect hop (a new connection) is checked the same way. Proxies from the environment are
ignored: a proxy would connect on our behalf to an address we never checked.

``retry_after_seconds`` reads a ``Retry-After`` header for both (image fetches, webhooks).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime

import httpcore
import httpx

from core.urlpolicy import UrlPolicy

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class PolicyNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks each host, then connects to the checked address (no rebinding gap)."""

    def __init__(self, policy: UrlPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.resolve(host, port)
        for address in addresses[:-1]:  # fall back across checked addresses (IPv6 down, say)
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError:
                continue
        return await self._inner.connect_tcp(str(addresses[-1]), port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed by the URL policy")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def policy_pool(
    policy: UrlPolicy,
    limits: httpx.Limits = DEFAULT_LIMITS,
    network: httpcore.AsyncNetworkBackend | None = None,
) -> httpcore.AsyncConnectionPool:
    """An httpcore connection pool that can reach only what ``policy`` allows (every connection
    resolved, checked and pinned). The image fetcher's client and the notifier both use it.
    ``network`` is what actually opens sockets once the policy chose the address (default:
    anyio); tests pass one that keeps every connection on loopback."""
    return httpcore.AsyncConnectionPool(
        ssl_context=ssl.create_default_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=PolicyNetworkBackend(policy, network),
    )


class PolicyTransport(httpx.AsyncHTTPTransport):
    """``AsyncHTTPTransport`` over a pool that connects only through ``PolicyNetworkBackend``."""

    def __init__(
        self,
        policy: UrlPolicy,
        limits: httpx.Limits = DEFAULT_LIMITS,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        # httpx offers no public hook for the network backend; swap the pool it built for one
        # with the same settings and our backend.
        self._pool = policy_pool(policy, limits, network)


def safe_client(
    policy: UrlPolicy,
    *,
    timeout: float,
    follow_redirects: bool,
    max_redirects: int = 0,
    limits: httpx.Limits = DEFAULT_LIMITS,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that can reach only what ``policy`` allows."""
    return httpx.AsyncClient(
        transport=PolicyTransport(policy, limits),
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        trust_env=False,
    )


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent
    or unreadable (clamping is the caller's policy)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
