"""An incremental reader for a JSON object with one long array, fed as the body arrives.

``POST /v1/groups`` carries up to ``max_group_images`` images in one ``images`` array. Parsing
the whole body first holds the text, every parsed dict and every validated model at once, so
the API replica's memory grows with the group (SPEC §8 wants it flat). ``ObjectStream`` is fed
the body's text in any pieces and hands out the top-level fields and, one by one, the items of
the streamed array; each value is decoded by ``json``'s own scanner (``raw_decode``), so what is
accepted and what each value becomes is exactly what ``json.loads`` gives. Only the text of the
value being read is held, up to ``max_value_chars``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, auto
from typing import IO, Any

WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()
KEEP_CHARS = 64 * 1024  # consumed text is dropped once this much has piled up
SLICE = 16 * 1024  # characters parsed at a time (``Utf8ObjectStream``)
READ_BLOCK = 64 * 1024  # bytes read from a file at a time (``read_file``)
STREAMED_MEMBER = "images"  # the member requests carry long arrays in: a group's images
TRUNCATION_WINDOW = 8  # a failure this close to the end may be a literal or escape cut short
NUMBER_CHARS = "0123456789.eE+-"


class MalformedJson(ValueError):
    """The text is not one JSON object (a 400 ``malformed-json`` problem)."""


class NotAnObject(ValueError):
    """The body is some other JSON value (a 422, as a model's validation would say)."""


class EmptyBody(NotAnObject):
    """The body holds no JSON value at all (a 422: the body is missing)."""


class RepeatedArray(ValueError):
    """The streamed array's member is given twice (``json.loads`` would keep the last)."""


class ValueTooLong(ValueError):
    """One value (a field, or one item of the array) is longer than ``max_value_chars``."""


@dataclass(frozen=True)
class Field:
    """A top-level member other than the streamed array, fully read."""

    name: str
    value: Any


@dataclass(frozen=True)
class Item:
    """One element of the streamed array, fully read; ``index`` counts from 0."""

    index: int
    value: Any


class _At(Enum):
    START = auto()  # before the opening brace
    KEY = auto()  # a member name or the closing brace (or, after a comma, a name only)
    COLON = auto()
    VALUE = auto()
    AFTER_VALUE = auto()  # a comma or the closing brace
    ARRAY_START = auto()  # the first item or the closing bracket
    ITEM = auto()  # an item, after a comma
    AFTER_ITEM = auto()  # a comma or the closing bracket
    END = auto()  # after the closing brace: only whitespace may follow


class ObjectStream:
    """Push parser: ``feed`` text as it arrives, get back what became complete; ``close`` at the
    end. A member named ``array`` whose value is an array is streamed item by item (``Item``);
    every other member, and an ``array`` member that is not an array, comes as one ``Field``."""

    def __init__(self, array: str, max_value_chars: int) -> None:
        self.array = array
        self.max_value_chars = max_value_chars
        self._text = ""
        self._pos = 0
        self._at = _At.START
        self._name = ""
        self._first = True  # no member (or item) read yet: a closing brace (bracket) may come
        self._items = 0
        self.array_seen = False  # the streamed array's member has come (as an array or not)
        self._top_value = False  # the body is a JSON value other than an object: read, then refused
        self._dropped = 0  # characters consumed and let go: positions in messages count from the body's start
        self._later: list[str] = []  # text fed while a value waits for more (joined when it is retried)
        self._later_chars = 0
        self._retry_at = 0  # the waiting value is retried once this much of its text is here

    def feed(self, text: str) -> list[Field | Item]:
        """Add text; return every field and item it completed, in order.

        A value whose text has not all come is tried again only once its text has doubled, and
        the text fed meanwhile is joined only then: the work stays linear in the body's size
        however its pieces fall (a value retried on every piece made it quadratic)."""
        self._later.append(text)
        self._later_chars += len(text)
        if len(self._text) - self._pos + self._later_chars < self._retry_at:
            return []
        return self._advance(final=False)

    def close(self) -> list[Field | Item]:
        """The body has ended: return what is left; raise ``MalformedJson`` if it is incomplete,
        ``NotAnObject`` (``EmptyBody``) if it is some other JSON value (none)."""
        out = self._advance(final=True)
        if self._at is _At.START:
            raise EmptyBody("the body is empty")
        if self._at is not _At.END:
            raise MalformedJson("the body ends before the JSON object does")
        if self._top_value:
            raise NotAnObject("the body must be a JSON object")
        return out

    def _take_later(self) -> None:
        """Drop the text consumed (once enough has piled up) and join what was fed since."""
        if self._pos > KEEP_CHARS:
            self._dropped += self._pos
            self._text, self._pos = self._text[self._pos:], 0
        if self._later:
            self._text += "".join(self._later)
            self._later, self._later_chars = [], 0

    def _malformed(self, what: str, pos: int) -> MalformedJson:
        return MalformedJson(f"{what} at character {self._dropped + pos}")

    def _skip_space(self) -> bool:
        """Move past whitespace; whether a character is there to read."""
        text, pos = self._text, self._pos
        while pos < len(text) and text[pos] in WHITESPACE:
            pos += 1
        self._pos = pos
        return pos < len(text)

    def _expect(self, char: str, what: str) -> None:
        if self._text[self._pos] != char:
            raise self._malformed(f"expected {what}", self._pos)
        self._pos += 1

    def _value(self, final: bool) -> tuple[bool, Any]:
        """Decode the value at the cursor: (True, value), or (False, None) when its text may not
        all have arrived yet."""
        text, pos = self._text, self._pos
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if final or not _truncated(exc, len(text)):
                raise self._malformed(exc.msg, exc.pos) from None
            return self._wait(len(text) - pos)
        except RecursionError:
            raise self._malformed("nested too deeply", pos) from None
        except ValueError as exc:  # an integer past Python's digit limit
            raise self._malformed(str(exc).split(";")[0], pos) from None
        if not final and _number_may_go_on(text, pos, end):
            return self._wait(len(text) - pos)
        if end - pos > self.max_value_chars:
            raise ValueTooLong(f"a value is longer than {self.max_value_chars} characters")
        self._pos, self._retry_at = end, 0
        return True, value

    def _wait(self, pending: int) -> tuple[bool, Any]:
        """The value at the cursor needs more text: try again when it has twice as much."""
        if pending > self.max_value_chars:
            raise ValueTooLong(f"a value is longer than {self.max_value_chars} characters")
        self._retry_at = 2 * pending
        return False, None

    def _advance(self, final: bool) -> list[Field | Item]:
        self._take_later()
        out: list[Field | Item] = []
        while self._skip_space():
            at = self._at
            if at is _At.START:
                if self._text[self._pos] == "[":  # some other value: read it (is it JSON?), refuse it at the end
                    self._pos += 1
                    self._at, self._first, self._top_value = _At.ARRAY_START, True, True
                elif self._text[self._pos] != "{":
                    done, _ = self._value(final)
                    if not done:
                        break
                    self._at, self._top_value = _At.END, True
                else:
                    self._pos += 1
                    self._at, self._first = _At.KEY, True
            elif at is _At.KEY:
                if self._first and self._text[self._pos] == "}":
                    self._pos += 1
                    self._at = _At.END
                    continue
                if self._text[self._pos] != '"':
                    raise self._malformed("expected a member name", self._pos)
                done, name = self._value(final)
                if not done:
                    break
                self._name, self._at = name, _At.COLON
            elif at is _At.COLON:
                self._expect(":", "':'")
                self._at = _At.VALUE
            elif at is _At.VALUE:
                streamed = self._name == self.array
                if streamed and self.array_seen:
                    raise RepeatedArray(f"{self.array!r} is given more than once")
                if streamed and self._text[self._pos] == "[":
                    self._pos += 1
                    self._at, self._first, self.array_seen = _At.ARRAY_START, True, True
                    continue
                done, value = self._value(final)
                if not done:
                    break
                self.array_seen = self.array_seen or streamed
                out.append(Field(self._name, value))
                self._at = _At.AFTER_VALUE
            elif at is _At.AFTER_VALUE:
                char = self._text[self._pos]
                self._pos += 1
                if char == ",":
                    self._at, self._first = _At.KEY, False
                elif char == "}":
                    self._at = _At.END
                else:
                    raise self._malformed("expected ',' or '}'", self._pos - 1)
            elif at in (_At.ARRAY_START, _At.ITEM):
                if at is _At.ARRAY_START and self._text[self._pos] == "]":
                    self._pos += 1
                    self._at = _At.END if self._top_value else _At.AFTER_VALUE
                    continue
                done, value = self._value(final)
                if not done:
                    break
                if not self._top_value:
                    out.append(Item(self._items, value))
                    self._items += 1
                self._at = _At.AFTER_ITEM
            elif at is _At.AFTER_ITEM:
                char = self._text[self._pos]
                self._pos += 1
                if char == ",":
                    self._at = _At.ITEM
                elif char == "]":
                    self._at = _At.END if self._top_value else _At.AFTER_VALUE
                else:
                    raise self._malformed("expected ',' or ']'", self._pos - 1)
            else:
                raise self._malformed("extra data after the JSON value", self._pos)
        return out


def _truncated(exc: json.JSONDecodeError, length: int) -> bool:
    """Whether a decoding failure may only mean the text stops early: a string still open at
    the end, or a failure among the last few characters (a literal or escape cut short). Wrongly
    answering yes only defers the verdict: the next piece, or the end, decides it."""
    return exc.msg.startswith("Unterminated string") or exc.pos >= length - TRUNCATION_WINDOW


def _number_may_go_on(text: str, start: int, end: int) -> bool:
    """Whether the value decoded from ``text[start:end]`` is a number whose text may continue in
    the next piece (``1`` of ``1.5``, ``1.`` of ``1.5``, ``2e`` of ``2e3``): only number
    characters up to the end of the text. Scanned in place: a slice of the rest of the text per
    number made a body of many small numbers quadratic."""
    if text[start] != "-" and not text[start].isdigit():
        return False
    while end < len(text) and text[end] in NUMBER_CHARS:
        end += 1
    return end == len(text)


class Utf8ObjectStream:
    """``ObjectStream`` fed bytes (UTF-8; a leading BOM is dropped), parsed ``SLICE`` characters
    at a time as the caller takes the results: a large read is never parsed at once, so what
    it completes is never held all together."""

    def __init__(self, array: str, max_value_chars: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._stream = ObjectStream(array, max_value_chars)

    @property
    def array_seen(self) -> bool:
        return self._stream.array_seen

    def feed(self, data: bytes, final: bool = False) -> Iterator[Field | Item]:
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise MalformedJson(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
        for start in range(0, len(text), SLICE):
            yield from self._stream.feed(text[start:start + SLICE])
        if final:
            yield from self._stream.close()


def read_file(file: IO[bytes], stream: Utf8ObjectStream) -> Iterator[Field | Item]:
    """Every field and item of the JSON object in ``file``, read from its start a block at a
    time through ``stream`` (a new one)."""
    file.seek(0)
    while data := file.read(READ_BLOCK):
        yield from stream.feed(data)
    yield from stream.feed(b"", final=True)


class TooManyMembers(ValueError):
    """More top-level members than a reader keeps."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def canonical_parts(file: IO[bytes], array: str, max_members: int, max_value_chars: int) -> Iterator[str]:
    """The canonical text of the JSON object in ``file`` (``json.dumps(..., sort_keys=True,
    separators=(",", ":"))``), piece by piece: the file is read once for the members other
    than ``array`` (at most ``max_members`` are kept), once more for ``array``'s items, each
    written as it is read. Raises ``ValueError`` for anything else."""
    members = Utf8ObjectStream(array, max_value_chars)
    fields: dict[str, Any] = {}
    for event in read_file(file, members):
        if isinstance(event, Field):
            fields[event.name] = event.value
            if len(fields) > max_members:
                raise TooManyMembers(f"more than {max_members} members")
    streamed = members.array_seen and array not in fields
    yield "{"
    for n, name in enumerate(sorted([*fields, array] if streamed else fields)):
        yield ("," if n else "") + json.dumps(name) + ":"
        if name in fields:
            yield _canonical(fields[name])
            continue
        yield "["
        items = (e.value for e in read_file(file, Utf8ObjectStream(array, max_value_chars)) if isinstance(e, Item))
        for i, item in enumerate(items):
            yield ("," if i else "") + _canonical(item)
        yield "]"
    yield "}"
