"""Requests and responses without I/O: the one implementation both clients run.

An operation is a generator that yields steps — ``Send`` (an HTTP request) or ``Pause`` (a
sleep) — and receives each ``Send``'s reply (the response, or the transport exception); its
return value is the result. ``Client`` performs the steps with ``httpx.Client`` and
``time.sleep``, ``AsyncClient`` with ``httpx.AsyncClient`` and ``asyncio.sleep``
(``_runners``), so retries, backoff, error mapping and ``wait``'s polling exist once.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from sightwire_client.errors import InvalidResponse, TransportError, WaitTimeout, error_from_response, retry_after_s
from sightwire_client.models import Record, Resource

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R", bound=Resource)
M = TypeVar("M", bound=BaseModel)

# Transport failures worth another try; others (an unsupported scheme, say) will not improve.
TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
PREFER_WAIT_MAX_S = 60  # the server holds a request at most this long (SPEC §2, ``Prefer: wait=N``)


@dataclass(frozen=True)
class Send:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    hold_s: float = 0.0  # the server may hold the request this long (Prefer: wait): added to the timeout

    def arguments(self, timeout_s: float) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` (and ``AsyncClient.request``)."""
        return {"method": self.method, "url": self.path, "params": self.params, "json": self.json,
                "headers": dict(self.headers), "timeout": timeout_s + self.hold_s}


@dataclass(frozen=True)
class Pause:
    seconds: float


Step = Send | Pause
Reply = httpx.Response | Exception | None
Operation = Generator[Step, Reply, T]


def jittered(seconds: float) -> float:
    """Between half and all of ``seconds``: spreads the clients that failed together."""
    return seconds * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class Retries:
    """Bounded retries of transport errors and of ``statuses`` (honouring ``Retry-After``).

    A POST is retried with the same ``Idempotency-Key``, so the server creates nothing twice."""

    attempts: int = 4  # in all, the first included
    backoff_s: float = 0.5  # doubling per attempt, jittered
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0  # a longer Retry-After is not waited for: the error is raised
    statuses: frozenset[int] = frozenset({429, 503})

    def pause(self, attempt: int, reply: httpx.Response | Exception) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None when ``reply`` is final."""
        if attempt >= self.attempts:
            return None
        backoff = jittered(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
        if isinstance(reply, Exception):
            return backoff if isinstance(reply, TRANSIENT) else None
        if reply.status_code not in self.statuses:
            return None
        after = retry_after_s(reply)
        if after is None:
            return backoff
        return after if after <= self.max_retry_after_s else None


NO_RETRIES = Retries(attempts=1)


def exchange(send: Send, retries: Retries) -> Operation[httpx.Response]:
    """Send until the reply is final; the 2xx response, or the typed error of the last reply."""
    attempt = 1
    while True:
        reply = yield send
        if reply is None:
            raise RuntimeError("a Send step must be answered with a response or an exception")
        wait_s = retries.pause(attempt, reply)
        if wait_s is None:
            break
        yield Pause(wait_s)
        attempt += 1
    if isinstance(reply, Exception):
        raise TransportError(f"{send.method} {send.path} failed after {attempt} attempt(s): {reply!r}") from reply
    if reply.is_error:
        raise error_from_response(reply)
    return reply


def parse(model: type[M], response: httpx.Response) -> M:
    """The response's record; ``InvalidResponse`` when the body is not one."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise InvalidResponse(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} with a body "
            f"that is not a {model.__name__}: {exc.errors()[0]['msg']}", response
        ) from exc


def idempotency_headers(key: str | None) -> dict[str, str]:
    """Every POST carries a key (yours, or one made for this call and kept across its retries)."""
    return {"Idempotency-Key": key or str(uuid.uuid4())}


def prefer_wait(hold_s: float) -> dict[str, str]:
    seconds = int(min(hold_s, PREFER_WAIT_MAX_S))
    return {"Prefer": f"wait={seconds}"} if seconds >= 1 else {}


def preference_applied(response: httpx.Response) -> bool:
    return "wait" in response.headers.get("preference-applied", "")


class Page(Record, Generic[T]):
    data: list[T]
    next_cursor: str | None = None


class Listing(Protocol[T_co]):
    """A cursor-paginated list: called with a page's cursor (None first), the operation fetching it."""

    def __call__(self, cursor: str | None, /) -> Operation[Page[T_co]]: ...


@dataclass(frozen=True)
class Polling:
    """How ``wait`` polls a server that cannot hold a request (no ``Preference-Applied``)."""

    first_s: float = 0.25
    max_s: float = 5.0


def poll_until_finished(
    first: R | None,
    fetch: Callable[[float], Operation[tuple[R, bool]]],
    timeout_s: float,
    polling: Polling,
) -> Operation[R]:
    """Fetch until the resource is finished. Each fetch asks the server to hold it until then
    (``Prefer: wait``); when the server did (``held``), ask again at once, else back off."""
    if first is not None and first.is_finished:
        return first
    deadline = time.monotonic() + timeout_s
    interval = polling.first_s
    while True:
        record, held = yield from fetch(max(0.0, deadline - time.monotonic()))
        if record.is_finished:
            return record
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(record, timeout_s)
        if not held:
            yield Pause(min(remaining, jittered(interval)))
            interval = min(interval * 2, polling.max_s)
