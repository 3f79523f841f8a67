"""A group request's body, read as it arrives, so the API's memory does not grow with the group.

``POST /v1/groups`` (and ``…/images``) may carry ``max_group_images`` images. The body is read
twice, never held whole:

1. as it comes off the wire (``group_body``): its text goes to a spool (in memory up to
   ``body_spool.SPOOL_IN_MEMORY``, then on disk) and through ``core.json_stream``; each
   ``CHUNK`` of images is validated (the ``GroupImage`` model, the URL policy, the metadata
   limit) and dropped, and the other members are kept and validated at the end. Refusals come
   as a whole-body validation gave them (``_Checker``), a bad image named ``images.<i>.<field>``;
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
    STREAMED_MEMBER,
    EmptyBody,
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
from core.store.groups import chunks
from serve_app.body_spool import body_spool
from serve_app.context import ApiContext
from serve_app.problems import Problem, invalid
from serve_app.routes.validation import check_metadata, check_urls

CHUNK = 1_000  # images validated, or written, at a time
ARRAY = STREAMED_MEMBER
IMAGES = TypeAdapter(list[GroupImage])
NON_EMPTY = TypeAdapter(Annotated[list[GroupImage], ModelField(min_length=1)])
MAX_ERRORS = 32  # unknown members reported at most (their values are never kept)
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


def _shape_errors(exc: ValidationError, prefix: tuple[str | int, ...], start: int = 0) -> list[dict[str, Any]]:
    """A model's errors as a whole-body validation reports them: under ``prefix``, an image's
    index counted from the start of the body."""
    return [{**e, "loc": (*prefix, *(start + p if i == 0 and isinstance(p, int) else p
                                      for i, p in enumerate(e["loc"])))}
            for e in exc.errors(include_url=False)]


def max_value_chars(ctx: ApiContext) -> int:
    """The longest text one member or one image may take before it is decoded: room for its
    metadata and URL at their limits however they are spelled (escapes, indentation), and at
    least 1 MiB. What it holds is checked against the real limits once decoded."""
    return max(1_048_576, 16 * (ctx.settings.max_metadata_bytes + ctx.settings.max_url_length))


def _stream(ctx: ApiContext) -> Utf8ObjectStream:
    return Utf8ObjectStream(ARRAY, max_value_chars(ctx))


def _is_json(content_type: str | None) -> bool:
    """What FastAPI parses a body of: ``application/json`` or ``application/*+json``."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class _Reader:
    """The body's bytes parsed (``Utf8ObjectStream``), the stream's refusals turned into problems."""

    def __init__(self, ctx: ApiContext) -> None:
        self._stream = _stream(ctx)

    @property
    def array_seen(self) -> bool:
        return self._stream.array_seen

    def feed(self, data: bytes, final: bool = False) -> Iterator[Field | Item]:
        try:
            yield from self._stream.feed(data, final)
        except MalformedJson as exc:
            raise _malformed(str(exc)) from None
        except EmptyBody:
            raise RequestValidationError([{**MISSING, "loc": ("body",)}]) from None
        except NotAnObject:
            raise RequestValidationError([NOT_AN_OBJECT]) from None
        except RepeatedArray:
            raise invalid(ARRAY, f"{ARRAY} is given more than once") from None
        except ValueTooLong as exc:
            raise invalid("body", str(exc)) from None


class _Checker(Generic[M]):
    """The first read's checks, a chunk of images at a time, in the order a whole-body
    validation made them: every failure is kept (the first chunk's shape errors, the first URL
    or metadata refusal) and raised once the body has ended, shape errors first (with the
    other members'), then the group's size, then the refusal. Past a URL or metadata refusal,
    images are only counted; once a shape error is found or the size is passed (``decided``),
    the answer is raised at once (``refuse_early``) and the rest is not parsed."""

    def __init__(self, ctx: ApiContext, fields_model: type[M], already: int) -> None:
        self._ctx = ctx
        self._model = fields_model
        self._names = {name for field_name, info in fields_model.model_fields.items()
                       for name in (field_name, info.alias) if name}
        self._already = already
        self._pending: list[Any] = []
        self._kept = 0  # images taken for checking: the first ``_kept`` of the body
        self._shape: list[dict[str, Any]] = []
        self._refusal: Problem | None = None
        self.fields: dict[str, Any] = {}
        self.count = 0
        self._ended = False  # the whole body was parsed (else the count is a lower bound)

    def take(self, events: Iterable[Field | Item]) -> None:
        """Take what the parser completed; stops (``decided``) once the answer is known."""
        for event in events:
            if isinstance(event, Field):
                self._field(event)
                continue
            self.count += 1
            if self.decided:
                return
            if not self._failed:
                self._pending.append(event.value)
                self._kept += 1
                if len(self._pending) == CHUNK:
                    self._check()

    @property
    def _over(self) -> bool:
        return self._already + self.count > self._ctx.settings.max_group_images

    @property
    def decided(self) -> bool:
        """Whether the rest of the body can change nothing: a shape error is the answer (the
        first failing chunk's), and so is the size once it is passed. The rest is then not
        parsed: parsing costs per item, so a hostile body of many tiny items costs at most
        ``max_group_images`` items' work, not its size's."""
        return bool(self._shape) or self._over

    @property
    def _failed(self) -> bool:
        return bool(self._shape) or self._refusal is not None

    def _field(self, event: Field) -> None:
        """Keep a member the model knows (or ``images`` sent as something else); an unknown one
        is an error at once, and its value is not kept (so a body of a million members costs
        nothing to hold)."""
        if event.name in self._names or event.name == ARRAY:
            self.fields[event.name] = event.value
        elif len(self._shape) < MAX_ERRORS:
            self._shape.append({"type": "extra_forbidden", "loc": ("body", event.name),
                                "msg": "Extra inputs are not permitted", "input": None})

    def _check(self) -> None:
        start, pending = self._kept - len(self._pending), self._pending
        self._pending = []
        if self._failed or not pending:
            return
        try:
            images = IMAGES.validate_python(pending)
        except ValidationError as exc:
            self._shape = _shape_errors(exc, ("body", ARRAY), start)
            return
        try:
            for i, image in enumerate(images, start):
                check_urls(self._ctx, **{f"{ARRAY}.{i}.url": image.url})
                check_metadata(self._ctx, image.metadata, f"{ARRAY}.{i}.metadata")
        except Problem as problem:
            self._refusal = problem

    def finish(self, array_seen: bool) -> M:
        """The body has ended: the last chunk, then every failure in order (see the class);
        the other members, validated."""
        self._ended = True
        self._check()
        errors = list(self._shape)
        if ARRAY in self.fields:  # sent as something other than an array: say what it should be
            errors += self._array_errors(self.fields.pop(ARRAY))
        elif not array_seen:
            errors.append(MISSING)
        elif self.count == 0:
            errors += self._array_errors([])
        try:
            fields = self._model.model_validate(self.fields)
        except ValidationError as exc:
            errors += _shape_errors(exc, ("body",))
        if errors:
            raise RequestValidationError(errors)
        self._raise_if_over()
        if self._refusal is not None:
            raise self._refusal
        return fields

    def refuse_early(self) -> None:
        """The body was left unparsed once ``decided``: raise the answer (the other members
        may not have come, so they are not judged)."""
        self._check()
        if self._shape:
            raise RequestValidationError(self._shape)
        self._raise_if_over()

    def _raise_if_over(self) -> None:
        if self._over:
            limit = self._ctx.settings.max_group_images
            raise invalid(ARRAY, f"a group holds at most {limit} images; this would make "
                                 f"{self._already + self.count}{'' if self._ended else ' or more'}")

    @staticmethod
    def _array_errors(value: Any) -> list[dict[str, Any]]:
        try:
            NON_EMPTY.validate_python(value)
        except ValidationError as exc:
            return _shape_errors(exc, ("body", ARRAY))
        return []


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
        values = (e.value for e in read_file(self._spool, _stream(self._ctx)) if isinstance(e, Item))
        for chunk in chunks(values, CHUNK):
            yield IMAGES.validate_python(chunk)


@contextlib.asynccontextmanager
async def group_body(request: Request, ctx: ApiContext, fields_model: type[M],
                     already: int = 0) -> AsyncIterator[GroupUpload[M]]:
    """Read and check the body of a group request (``already``: images the group has); the
    spool lives until the block ends. A refusal is raised after the rest of the body has been
    read (the cap bounds it), so a client still sending gets the answer rather than a reset."""
    with body_spool() as spool:
        body = request.stream()
        try:
            if not _is_json(request.headers.get("content-type")):
                raise RequestValidationError([NOT_AN_OBJECT])
            reader, checker = _Reader(ctx), _Checker(ctx, fields_model, already)
            async for data in body:
                spool.write(data)
                checker.take(reader.feed(data))
                if checker.decided:
                    checker.refuse_early()
            checker.take(reader.feed(b"", final=True))
            fields = checker.finish(reader.array_seen)
        except (Problem, RequestValidationError):
            async for _ in body:  # the rest of a refused body, unread and unkept
                pass
            raise
        yield GroupUpload(fields, checker.count, spool, ctx)
