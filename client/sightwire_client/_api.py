"""The API's calls, written once for both clients.

Each public method of ``Operations`` builds an operation (``_protocol``); the ``endpoint`` and
``paged`` descriptors hand it to the client's runner, so on a ``Client`` the method returns the
result and on an ``AsyncClient`` an awaitable of it (pages: an iterator or an async iterator).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload
from urllib.parse import quote

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from sightwire_client._protocol import (
    Listing,
    Operation,
    Page,
    Polling,
    Retries,
    Send,
    exchange,
    idempotency_headers,
    parse,
    poll_until_finished,
    prefer_wait,
    preference_applied,
)
from sightwire_client._runners import AsyncRunner, SyncRunner
from sightwire_client.models import (
    Delivery,
    EndpointHealth,
    EventType,
    Group,
    Image,
    ModelInfo,
    NewImage,
    Resource,
    Status,
    WebhookSecret,
)

P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
RecordT = TypeVar("RecordT", Image, Group)

ImageInput = str | NewImage | dict[str, Any]


class _Bound(Generic[P, T]):
    def __init__(self, build: Callable[Concatenate[Any, P], T]) -> None:
        self._build = build
        functools.update_wrapper(self, build)
        signature = inspect.signature(build)
        # What ``help()`` shows on a client: no ``self``, and no operation as the return type.
        self._bound_signature = signature.replace(
            parameters=list(signature.parameters.values())[1:], return_annotation=inspect.Signature.empty
        )

    def _bind(self, runner: Callable[[T], Any]) -> Callable[..., Any]:
        """The method on one client: build the operation, hand it to that client's runner."""
        client = runner.__self__  # type: ignore[attr-defined]

        def method(*args: Any, **kwargs: Any) -> Any:
            return runner(self._build(client, *args, **kwargs))

        functools.update_wrapper(method, self._build)
        del method.__wrapped__
        method.__signature__ = self._bound_signature  # type: ignore[attr-defined]
        return method


class endpoint(_Bound[P, Operation[T]]):
    @overload
    def __get__(self, client: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, client: SyncRunner, owner: type | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncRunner, owner: type | None = None) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, client: Any, owner: type | None = None) -> Any:
        return self if client is None else self._bind(client._run)


class paged(_Bound[P, Listing[T]]):
    @overload
    def __get__(self, client: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, client: SyncRunner, owner: type | None = None) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, client: AsyncRunner, owner: type | None = None) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, client: Any, owner: type | None = None) -> Any:
        return self if client is None else self._bind(client._iterate)


def _body(**fields: Any) -> dict[str, Any]:
    """camelCase JSON of the fields that are set."""
    return {to_camel(name): value for name, value in fields.items() if value is not None}


def _deadline(deadline: float | datetime | None) -> float | str | None:
    """Seconds from now as they are, a time as RFC 3339 (it must carry its offset)."""
    return deadline.isoformat() if isinstance(deadline, datetime) else deadline


def _events(events: Sequence[EventType | str] | None) -> list[str] | None:
    return None if events is None else [str(e) for e in events]


def _images(images: Sequence[ImageInput]) -> list[Any]:
    return [
        {"url": i} if isinstance(i, str) else i.model_dump(by_alias=True, exclude_none=True) if isinstance(i, NewImage)
        else i
        for i in images
    ]


def _path(kind: str, resource_id: str, *rest: str) -> str:
    return "/".join(("/v1", kind, quote(resource_id, safe=""), *rest))


def _kind(resource: Resource | str) -> tuple[str, type[Image] | type[Group], str]:
    """``("groups", Group, id)`` or ``("images", Image, id)``, from a record or an id's prefix."""
    if isinstance(resource, Group) or (isinstance(resource, str) and resource.startswith("grp_")):
        return "groups", Group, resource if isinstance(resource, str) else resource.id
    return "images", Image, resource if isinstance(resource, str) else resource.id


class Operations:
    """Every call of the v1 API. POSTs take ``idempotency_key=`` (one is made when omitted)."""

    _retries: Retries
    _polling: Polling

    def _call(self, model: type[M], send: Send) -> Operation[M]:
        response = yield from exchange(send, self._retries)
        return parse(model, response)

    def _post(self, model: type[M], path: str, body: Any, key: str | None, *, hold_s: float = 0.0) -> Operation[M]:
        headers = {**idempotency_headers(key), **prefer_wait(hold_s)}
        return self._call(model, Send("POST", path, json=body, headers=headers, hold_s=hold_s))

    def _image_pages(self, status: Status | str | None, group_id: str | None, page_size: int) -> Listing[Image]:
        def page(cursor: str | None) -> Operation[Page[Image]]:
            params = _body(status=status and str(status), group_id=group_id, limit=page_size, cursor=cursor)
            return self._call(Page[Image], Send("GET", "/v1/images", params=params))

        return page

    # --- images -------------------------------------------------------------------------------

    @endpoint
    def submit_image(
        self,
        url: str,
        models: Sequence[str],
        *,
        webhook_url: str | None = None,
        webhook_events: Sequence[EventType | str] | None = None,
        metadata: dict[str, Any] | None = None,
        external_id: str | None = None,
        deadline: float | datetime | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Operation[Image]:
        """Queue an image (202). With ``wait`` (seconds) the server may hold the request until the
        image is finished (``Prefer: wait``, at most 60 s); check ``is_finished``, or call ``wait``.
        Work not done by ``deadline`` (seconds from now, or a time) is canceled (code ``deadline``)."""
        body = _body(url=url, models=list(models), webhook_url=webhook_url, webhook_events=_events(webhook_events),
                     metadata=metadata, external_id=external_id, deadline=_deadline(deadline))
        return self._post(Image, "/v1/images", body, idempotency_key, hold_s=wait or 0.0)

    @endpoint
    def get_image(self, image_id: str) -> Operation[Image]:
        return self._call(Image, Send("GET", _path("images", image_id)))

    @paged
    def list_images(
        self, *, status: Status | str | None = None, group_id: str | None = None, page_size: int = 50
    ) -> Listing[Image]:
        """Every image of your organisation, newest first (a group's in order), page by page."""
        return self._image_pages(status, group_id, page_size)

    @paged
    def iter_group_images(self, group_id: str, *, status: Status | str | None = None,
                          page_size: int = 100) -> Listing[Image]:
        """The group's images in the order they were added, as full records."""
        return self._image_pages(status, group_id, page_size)

    @endpoint
    def add_models(self, image_id: str, models: Sequence[str], *, idempotency_key: str | None = None
                   ) -> Operation[Image]:
        """Run models the image lacks; its webhook fires again (``image.updated``)."""
        return self._post(Image, _path("images", image_id, "models"), {"models": list(models)}, idempotency_key)

    @endpoint
    def cancel_image(self, image_id: str, *, idempotency_key: str | None = None) -> Operation[Image]:
        """Stop the image's work not yet done; results so far are kept."""
        return self._post(Image, _path("images", image_id, "cancel"), None, idempotency_key)

    # --- groups -------------------------------------------------------------------------------

    @endpoint
    def submit_group(
        self,
        images: Sequence[ImageInput],
        models: Sequence[str],
        *,
        webhook_url: str | None = None,
        webhook_events: Sequence[EventType | str] | None = None,
        metadata: dict[str, Any] | None = None,
        external_id: str | None = None,
        deadline: float | datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Operation[Group]:
        """Queue a group: image URLs (or ``NewImage``s with metadata), one set of models; work not
        done by ``deadline`` (seconds from now, or a time) is canceled (code ``deadline``)."""
        body = _body(images=_images(images), models=list(models), webhook_url=webhook_url,
                     webhook_events=_events(webhook_events), metadata=metadata, external_id=external_id,
                     deadline=_deadline(deadline))
        return self._post(Group, "/v1/groups", body, idempotency_key)

    @endpoint
    def get_group(self, group_id: str) -> Operation[Group]:
        return self._call(Group, Send("GET", _path("groups", group_id)))

    @endpoint
    def add_group_images(self, group_id: str, images: Sequence[ImageInput], *,
                         idempotency_key: str | None = None) -> Operation[Group]:
        return self._post(Group, _path("groups", group_id, "images"), {"images": _images(images)}, idempotency_key)

    @endpoint
    def add_group_models(self, group_id: str, models: Sequence[str], *,
                         idempotency_key: str | None = None) -> Operation[Group]:
        return self._post(Group, _path("groups", group_id, "models"), {"models": list(models)}, idempotency_key)

    @endpoint
    def cancel_group(self, group_id: str, *, idempotency_key: str | None = None) -> Operation[Group]:
        return self._post(Group, _path("groups", group_id, "cancel"), None, idempotency_key)

    @endpoint
    def retry_group(self, group_id: str, *, idempotency_key: str | None = None) -> Operation[Group]:
        """Run the group's failures again (failed images, failed models of partial ones); 409 while
        it runs or when nothing failed."""
        return self._post(Group, _path("groups", group_id, "retry"), None, idempotency_key)

    # --- waiting ------------------------------------------------------------------------------

    @endpoint
    def wait(self, resource: RecordT | str, *, timeout: float = 300.0) -> Operation[RecordT]:
        """The resource (an ``Image``, a ``Group`` or an ``img_``/``grp_`` id) once it is finished;
        ``WaitTimeout`` (with the last state) after ``timeout`` seconds. Uses ``Prefer: wait`` where
        the server honours it, else polls with backoff and jitter."""
        kind, model, resource_id = _kind(resource)

        def fetch(hold_s: float) -> Operation[tuple[Any, bool]]:
            send = Send("GET", _path(kind, resource_id), headers=prefer_wait(hold_s), hold_s=hold_s)
            response = yield from exchange(send, self._retries)
            return parse(model, response), preference_applied(response)

        first = None if isinstance(resource, str) else resource
        return poll_until_finished(first, fetch, timeout, self._polling)

    # --- webhooks -----------------------------------------------------------------------------

    @endpoint
    def deliveries(self, resource: Resource | str, *, limit: int = 100) -> Operation[list[Delivery]]:
        """The resource's webhook deliveries, newest first, each with every attempt."""
        kind, _, resource_id = _kind(resource)
        send = Send("GET", _path(kind, resource_id, "deliveries"), params={"limit": limit})
        return self._unwrap(self._call(Page[Delivery], send))

    @endpoint
    def get_delivery(self, delivery_id: str) -> Operation[Delivery]:
        return self._call(Delivery, Send("GET", _path("deliveries", delivery_id)))

    @endpoint
    def retry_delivery(self, delivery_id: str, *, idempotency_key: str | None = None) -> Operation[Delivery]:
        """Send the delivery again now, with the same ``webhook-id``."""
        return self._post(Delivery, _path("deliveries", delivery_id, "retry"), None, idempotency_key)

    @endpoint
    def endpoint_health(self, url: str) -> Operation[EndpointHealth]:
        return self._call(EndpointHealth, Send("GET", "/v1/endpoints", params={"url": url}))

    @endpoint
    def list_endpoints(self) -> Operation[list[EndpointHealth]]:
        return self._unwrap(self._call(Page[EndpointHealth], Send("GET", "/v1/endpoints")))

    @endpoint
    def enable_endpoint(self, url: str, *, idempotency_key: str | None = None) -> Operation[EndpointHealth]:
        """Close the endpoint's breaker and release what it holds (``released`` says how many)."""
        return self._post(EndpointHealth, "/v1/endpoints/enable", {"url": url}, idempotency_key)

    @endpoint
    def webhook_secret(self) -> Operation[WebhookSecret]:
        return self._call(WebhookSecret, Send("GET", "/v1/webhook-secret"))

    @endpoint
    def rotate_webhook_secret(self, *, grace_seconds: float | None = None, idempotency_key: str | None = None
                              ) -> Operation[WebhookSecret]:
        """A new secret signs from now on; the old one keeps signing for ``grace_seconds``."""
        body = _body(grace_seconds=grace_seconds)
        return self._post(WebhookSecret, "/v1/webhook-secret/rotate", body, idempotency_key)

    @endpoint
    def send_test_event(self, url: str, *, idempotency_key: str | None = None) -> Operation[Delivery]:
        """Queue a signed ``webhook.test`` event to ``url`` through the normal delivery path."""
        return self._post(Delivery, "/v1/webhooks/test", {"url": url}, idempotency_key)

    # --- operations ---------------------------------------------------------------------------

    @endpoint
    def list_models(self) -> Operation[list[ModelInfo]]:
        return self._unwrap(self._call(Page[ModelInfo], Send("GET", "/v1/models")))

    @staticmethod
    def _unwrap(operation: Operation[Page[T]]) -> Operation[list[T]]:
        page = yield from operation
        return page.data


class Client(Operations, SyncRunner):
    """The Sightwire API, synchronously: ``with Client(api_key) as sw: sw.submit_image(...)``."""


class AsyncClient(Operations, AsyncRunner):
    """The Sightwire API on asyncio: ``async with AsyncClient(api_key) as sw: await sw.submit_image(...)``."""
