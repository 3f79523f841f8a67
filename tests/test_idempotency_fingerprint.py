"""``core.store.idempotency.fingerprint`` reads the body from a file, never whole, and gives the
hash that the whole-body formula gave, so keys stored before it still match their retries."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from core.store.idempotency import fingerprint
from tests.test_json_stream import BODIES


def whole_body(method: str, path: str, body: bytes) -> str:
    """The formula as it was: the body parsed whole, or its bytes if it is not JSON."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


GROUP = json.dumps({"webhookUrl": "https://h.example/x", "images": [{"url": f"https://i.example/{i}.jpg",
                    "metadata": {"z": i, "a": [i, {"é": None}]}} for i in range(3_000)], "models": ["m", "n"],
                    "deadline": 30, "externalId": "ext"})


@pytest.mark.parametrize("body", [*BODIES, GROUP, '{"images": []}', '{}', '{"a": NaN, "b": 1e5, "c": "\\u00e9"}'])
def test_a_json_object_hashes_as_the_whole_body_formula_did(body: str) -> None:
    raw = body.encode()
    assert fingerprint("POST", "/v1/groups", io.BytesIO(raw)) == whole_body("POST", "/v1/groups", raw)


def test_order_and_spacing_do_not_change_it_and_content_does() -> None:
    same = json.dumps(dict(reversed(json.loads(GROUP).items())), indent=2).encode()
    assert fingerprint("POST", "/p", io.BytesIO(GROUP.encode())) == fingerprint("POST", "/p", io.BytesIO(same))
    other = GROUP.replace("2999.jpg", "3000.jpg").encode()
    assert fingerprint("POST", "/p", io.BytesIO(GROUP.encode())) != fingerprint("POST", "/p", io.BytesIO(other))


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"images": [1], "images": [2]}', b"\xff\xfe"])
def test_a_body_that_is_not_one_json_object_hashes_by_its_bytes(body: bytes) -> None:
    expected = hashlib.sha256(b"POST /p\n" + body).hexdigest()
    assert fingerprint("POST", "/p", io.BytesIO(body)) == expected
