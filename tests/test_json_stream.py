"""``core.json_stream``: fed in any pieces, it reads what ``json.loads`` reads, and refuses
what it refuses."""

from __future__ import annotations

import json
import random

import pytest

from core.json_stream import (
    Field,
    Item,
    MalformedJson,
    NotAnObject,
    ObjectStream,
    RepeatedArray,
    ValueTooLong,
)

BODIES = [
    '{"images": [{"url": "http://a/1"}, {"url": "http://a/2", "metadata": {"k": [1, 2.5e3, -0.25]}}],'
    ' "models": ["m"], "webhookUrl": null}',
    '{"models": ["m"], "images": [], "deadline": 12.5}',
    '  {  }  ',
    '{"images": "not an array", "n": -12, "t": true, "f": false}',
    '{"images": [1, 22, 333, -4.5e-3, "x\\u00e9\\"y", [], {}, null, true]}',
    '{"a": "caf\u00e9 \u6771\u4eac \U0001f600", "images": [{"url": "\\ud83d\\ude00"}]}',
    '{"nested": {"images": [1, 2]}, "images": [{"a": {"b": {"c": [[[]]]}}}]}',
]


def read_all(body: str, pieces: list[str], array: str = "images") -> tuple[dict, list | None]:
    stream = ObjectStream(array, max_value_chars=1_000_000)
    events: list[Field | Item] = []
    for piece in pieces:
        events += stream.feed(piece)
    events += stream.close()
    fields = {e.name: e.value for e in events if isinstance(e, Field)}
    items = [e for e in events if isinstance(e, Item)]
    assert [i.index for i in items] == list(range(len(items)))
    streamed = "images" not in fields and '"images": [' in body
    return fields, ([i.value for i in items] if streamed else None)


def split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("body", BODIES)
def test_every_split_reads_what_json_loads_reads(body: str) -> None:
    expected = json.loads(body)
    rng = random.Random(repr(body))
    for pieces in [[body], list(body), *(split(body, rng) for _ in range(60))]:
        fields, items = read_all(body, pieces)
        if items is not None:
            fields = {**fields, "images": items}
        assert fields == expected, pieces


@pytest.mark.parametrize("body", [
    '{"images": [1, 2}', '{"a" 1}', '{"a": 1,}', '{"a": 1} x', '{"a": tru}', '{"a": 01}',
    '{"images": [1,, 2]}', '{"images": [1 2]}', '{"a": "\x01"}', '{"a": "\\x"}', '{"images": [1]', '{"a": 1',
    '{"a": [' + '[' * 100_000 + ']' * 100_000 + ']}', '{a: 1}', '{"a": 1 "b": 2}',
])
def test_what_json_loads_refuses_is_malformed_in_any_pieces(body: str) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json.loads(body)
    rng = random.Random(repr(body))
    for pieces in [[body], *(split(body, rng) for _ in range(20) if len(body) > 1)]:
        stream = ObjectStream("images", max_value_chars=10_000_000)
        with pytest.raises(MalformedJson):
            for piece in pieces:
                stream.feed(piece)
            stream.close()


@pytest.mark.parametrize("body", ['[1, 2]', '[]', ' "x" ', '3', 'null', '[{"images": [1]}]', ''])
def test_json_that_is_not_an_object_is_told_apart_from_what_is_not_json(body: str) -> None:
    for pieces in [[body], list(body)]:
        stream = ObjectStream("images", max_value_chars=100)
        with pytest.raises(NotAnObject):
            for piece in pieces:
                assert stream.feed(piece) == []
            stream.close()


@pytest.mark.parametrize("body", ['[1, 2', 'x', '[1,]', '"open', '3 4', '[1] 2'])
def test_what_is_neither_is_malformed(body: str) -> None:
    stream = ObjectStream("images", max_value_chars=100)
    with pytest.raises(MalformedJson):
        stream.feed(body)
        stream.close()


@pytest.mark.parametrize("body", ['{"images": [0' + "0" * 200_000 + "]}", '{"a": "' + "x" * 200_000 + '"}',
                                  '{"images": [' + "[" * 5 + "1," * 100_000 + "1" + "]" * 5 + "]}"])
def test_a_long_value_costs_linear_work_however_it_is_cut(body: str) -> None:
    """Fed 100 characters at a time, a 200,000-character value that is never complete (or is
    refused) is not decoded again on every piece: the text must double between tries."""
    stream = ObjectStream("images", max_value_chars=150_000)
    calls = 0
    real = json.JSONDecoder.raw_decode

    def counted(self, text, idx=0):
        nonlocal calls
        calls += 1
        return real(self, text, idx)

    json.JSONDecoder.raw_decode = counted
    try:
        with pytest.raises((ValueTooLong, MalformedJson)):
            for start in range(0, len(body), 100):
                stream.feed(body[start:start + 100])
            stream.close()
    finally:
        json.JSONDecoder.raw_decode = real
    assert calls < 40, calls


def test_an_integer_past_the_digit_limit_is_malformed_not_an_error() -> None:
    with pytest.raises(MalformedJson):
        stream = ObjectStream("images", max_value_chars=100_000)
        stream.feed('{"images": [' + "1" * 5_000 + "]}")
        stream.close()


def test_positions_count_from_the_start_of_the_body() -> None:
    stream = ObjectStream("images", max_value_chars=1_000)
    item = '{"url": "' + "u" * 90 + '"}, '
    stream.feed('{"images": [' + item * 2_000)
    with pytest.raises(MalformedJson, match=f"at character {12 + 2_000 * len(item)}"):
        stream.feed("x]}")
        stream.close()


def test_numbers_split_anywhere_keep_their_digits() -> None:
    body = '{"images": [12345, -6.75e-2, 0.5], "n": 987}'
    for cut in range(1, len(body)):
        fields, items = read_all(body, [body[:cut], body[cut:]])
        assert items == [12345, -6.75e-2, 0.5] and fields == {"n": 987}, cut


def test_a_value_longer_than_the_limit_is_refused_before_the_rest_arrives() -> None:
    stream = ObjectStream("images", max_value_chars=1_000)
    stream.feed('{"images": [{"url": "')
    with pytest.raises(ValueTooLong):
        for _ in range(100):
            stream.feed("x" * 100)


def test_items_come_out_as_their_text_completes_and_read_text_is_let_go() -> None:
    stream = ObjectStream("images", max_value_chars=1_000)
    assert stream.feed('{"images": [{"url": "a"}, {"url"') == [Item(0, {"url": "a"})]
    assert stream.feed(': "b"}') == [Item(1, {"url": "b"})]
    item = ', {"url": "' + "u" * 200 + '"}'
    for _ in range(2_000):  # 400 KB of items
        stream.feed(item)
    assert len(stream._text) < 70 * 1024  # only text not yet consumed, plus one slice of read text
    assert stream.feed('], "models": ["m"]}') == [Field("models", ["m"])]
    assert stream.close() == []


@pytest.mark.parametrize("body", ['{"images": [1], "images": [2]}', '{"images": "x", "images": [2]}',
                                  '{"images": [1], "a": 1, "images": "some text"}'])
def test_the_streamed_member_given_twice_is_refused_in_any_pieces(body: str) -> None:
    rng = random.Random(repr(body))
    for pieces in [[body], list(body), *(split(body, rng) for _ in range(10))]:
        stream = ObjectStream("images", max_value_chars=1_000)
        with pytest.raises(RepeatedArray):
            for piece in pieces:
                stream.feed(piece)
            stream.close()
