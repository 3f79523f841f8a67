"""A group request's body, read as it arrives, so the API's memory does not grow with the group.

``POST /v1/groups`` (and ``…/images``) may carry ``max_group_images`` images. The body is read
twice, never held whole:

1. as it comes off the wire (``group_body``): its text goes to a spool file (in memory up to
   ``body_limit.SPOOL_IN_MEMORY``, then on disk) and through ``core.json_stream``; each ``CHUNK`` of images is
   validated (the ``GroupImage`` model, the URL policy, the metadata limit) and dropped, and the
   other members are kept and validated at the end. A bad image answers 422 naming
   ``images.<i>.<field>`` as a whole-body validation did;
2. once every check has passed and the images are charged, from the spool
   (``GroupUpload.chunks``), chunk by chunk, to the store (``GroupStore.create_from``).

Only the chunk at hand is ever parsed, so the replica holds at most a chunk of images, one
value's text and the spool's in-memory part, whatever the group's size (SPEC §8).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Annotated, Any, Generic, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic import Field as ModelField

from core.json_stream import (
    Field,
    Item,
    MalformedJson,
    NotAnObject,
    RepeatedArray,
    Utf8ObjectStream,
    ValueTooLong,
    read_file,
)
from core.schemas import GroupImage
from serve_app.body_limit import body_spool
from serve_app.context import ApiContext
from serve_app.problems import Problem, invalid
from serve_app.routes.validation import check_metadata, check_urls

CHUNK = 1_000  # images validated, or written, at a time
ARRAY = "images"
IMAGES = TypeAdapter(list[GroupImage])
NON_EMPTY = TypeAdapter(Annotated[list[GroupImage], ModelField(min_length=1)])
NOT_AN_OBJECT = {"type": "model_attributes_type", "loc": ("body",), "input": None,
                 "msg": "Input should be a valid dictionary or object to extract fields from"}

MISSING = {"type": "missing", "loc": ("body", ARRAY), "msg": "Field required", "input": None}

M = TypeVar("M", bound=BaseModel)
DOCUMENTED_BODIES: dict[str, type[BaseModel]] = {}  # the models of bodies read here: the OpenAPI
# document has no route parameter to derive them from (``serve_app.openapi``)


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's ``openapi_extra`` for a JSON body of ``model`` that the route reads itself."""
    DOCUMENTED_BODIES[model.__name__] = model
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _malformed(detail: str) -> Problem:
    return Problem(400, "malformed-json", "Body is not valid JSON", detail)


def _validated(items: list[Any], start: int, adapter: TypeAdapter[list[GroupImage]] = IMAGES) -> list[GroupImage]:
    """``items`` (the ``start``-th image on) as models; a failure names each image by its place
    in the whole body."""
    try:
        return adapter.validate_python(items)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", ARRAY, *(start + p if i == 0 and isinstance(p, int) else p
                                                 for i, p in enumerate(e["loc"])))}
                  for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def max_value_chars(ctx: ApiContext) -> int:
    """The longest text one member or one image may take: its metadata and URL at the limits,
    every character escaped (``\\uXXXX``), and room for the rest."""
    return 6 * (ctx.settings.max_metadata_bytes + ctx.settings.max_url_length) + 4096


class _Reader:
    """The body's bytes parsed (``Utf8ObjectStream``), the stream's refusals turned into problems."""

    def __init__(self, ctx: ApiContext) -> None:
        self._stream = Utf8ObjectStream(ARRAY, max_value_chars(ctx))

    @property
    def array_seen(self) -> bool:
        return self._stream.array_seen

    def feed(self, data: bytes, final: bool = False) -> Iterator[Field | Item]:
        try:
            yield from self._stream.feed(data, final)
        except MalformedJson as exc:
            raise _malformed(str(exc)) from None
        except NotAnObject:
            raise RequestValidationError([NOT_AN_OBJECT]) from None
        except RepeatedArray:
            raise invalid(ARRAY, f"{ARRAY} is given more than once") from None
        except ValueTooLong as exc:
            raise invalid("body", str(exc)) from None


class _Checker:
    """The first read's checks, a chunk at a time, and what it keeps: the other members and the
    number of images."""

    def __init__(self, ctx: ApiContext, already: int) -> None:
        self._ctx = ctx
        self._already = already
        self._pending: list[Any] = []
        self.fields: dict[str, Any] = {}
        self.count = 0

    def take(self, events: Iterable[Field | Item]) -> None:
        for event in events:
            if isinstance(event, Field):
                self.fields[event.name] = event.value
                continue
            self.count += 1
            if self._already + self.count <= self._ctx.settings.max_group_images:
                self._pending.append(event.value)  # past the limit: only counted, for the message
                if len(self._pending) == CHUNK:
                    self.check()

    def check(self) -> None:
        start = self.count - len(self._pending)
        for i, image in enumerate(_validated(self._pending, start), start):
            check_urls(self._ctx, **{f"{ARRAY}.{i}.url": image.url})
            check_metadata(self._ctx, image.metadata, f"{ARRAY}.{i}.metadata")
        self._pending = []

    def finish(self, array_seen: bool) -> None:
        """The checks left once the body has ended: the last chunk, the size, and the images as
        a whole (present, not empty, an array)."""
        self.check()
        if ARRAY in self.fields:  # sent as something other than an array: say what it should be
            _validated(self.fields.pop(ARRAY), 0, NON_EMPTY)
        if not array_seen:
            raise RequestValidationError([MISSING])
        if self.count == 0:
            _validated([], 0, NON_EMPTY)
        limit = self._ctx.settings.max_group_images
        if self._already + self.count > limit:
            raise invalid(ARRAY, f"a group holds at most {limit} images; this would make {self._already + self.count}")


@dataclass
class GroupUpload(Generic[M]):
    """A group body that passed every check: its other members, its number of images, and its
    text, to read the images again for the write."""

    fields: M
    count: int
    _spool: IO[bytes]
    _ctx: ApiContext

    async def chunks(self) -> AsyncIterator[list[GroupImage]]:
        """The images, ``CHUNK`` at a time, parsed again from the spool (the first read checked
        it, so this one cannot fail)."""
        pending: list[Any] = []
        done = 0
        for event in read_file(self._spool, Utf8ObjectStream(ARRAY, max_value_chars(self._ctx))):
            if isinstance(event, Item):
                pending.append(event.value)
                if len(pending) == CHUNK:
                    yield _validated(pending, done)
                    done, pending = done + len(pending), []
        if pending:
            yield _validated(pending, done)


@contextlib.asynccontextmanager
async def group_body(request: Request, ctx: ApiContext, fields_model: type[M],
                     already: int = 0) -> AsyncIterator[GroupUpload[M]]:
    """Read and check the body of a group request (``already``: images the group has); the
    spool lives until the block ends. A refusal is raised after the rest of the body has been
    read (the cap bounds it), so a client still sending gets the answer rather than a reset."""
    with body_spool() as spool:
        body = request.stream()
        reader, checker = _Reader(ctx), _Checker(ctx, already)
        try:
            async for data in body:
                spool.write(data)
                checker.take(reader.feed(data))
            checker.take(reader.feed(b"", final=True))
            checker.finish(reader.array_seen)
            try:
                fields = fields_model.model_validate(checker.fields)
            except ValidationError as exc:
                raise RequestValidationError(
                    [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) from None
        except (Problem, RequestValidationError):
            async for _ in body:  # the rest of a refused body, unread and unkept
                pass
            raise
        yield GroupUpload(fields, checker.count, spool, ctx)
