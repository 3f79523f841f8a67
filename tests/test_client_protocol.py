"""The client's shared request/response logic, without I/O: the error table, ``Retry-After``,
the retry policy, and ``wait``'s polling. Operations are driven by hand with real
``httpx.Response`` objects; each ``Pause`` they ask for is recorded instead of slept."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

import serve_app
import sightwire_client as sw
from serve_app.problems import PROBLEM_BASE, STATUS_TYPES, Problem
from sightwire_client._protocol import Pause, Polling, Retries, Send, exchange
from sightwire_client.errors import PROBLEMS, error_from_response, retry_after_s

IMAGE = {"id": "img_1", "object": "image", "url": "http://x/a.png", "models": {}, "sequence": 1,
         "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}


def response(status: int, body: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def problem(status: int, slug: str, **extra: Any) -> httpx.Response:
    """An error as the server's own ``Problem`` writes it."""
    errors = extra.pop("errors", None)
    rendered = Problem(status, slug, "Title", "the detail", errors=errors, headers=extra).response("/p")
    return httpx.Response(status, content=rendered.body, headers=dict(rendered.headers))


def drive(operation: Any, replies: Iterable[httpx.Response | Exception], steps: list[Any] | None = None) -> Any:
    """Run an operation: each ``Send`` gets the next reply; ``Pause`` steps are recorded, not slept."""
    steps = [] if steps is None else steps
    replies = iter(replies)
    reply = None
    try:
        while True:
            step = operation.send(reply)
            steps.append(step)
            reply = next(replies) if isinstance(step, Send) else None
    except StopIteration as done:
        return done.value


SERVER_TYPES = [
    (400, "malformed-json", sw.BadRequest), (401, "unauthorized", sw.Unauthorized), (404, "not-found", sw.NotFound),
    (409, "delivery-superseded", sw.DeliverySuperseded), (409, "delivery-in-flight", sw.DeliveryInFlight),
    (409, "endpoint-disabled", sw.EndpointDisabled), (409, "image-not-runnable", sw.ImageNotRunnable),
    (413, "payload-too-large", sw.PayloadTooLarge), (422, "validation-error", sw.InvalidRequest),
    (503, "store-unavailable", sw.ServiceUnavailable),
]


@pytest.mark.parametrize(("status", "slug", "expected"), SERVER_TYPES)
def test_every_server_problem_maps_to_its_exception_with_the_problem_fields(status: int, slug: str,
                                                                            expected: type) -> None:
    fields = [{"field": "url", "message": "bad"}]
    error = error_from_response(problem(status, slug, errors=fields, **{"Retry-After": "3"}))
    assert type(error) is expected and isinstance(error, sw.APIError)
    assert (error.status, error.type, error.title, error.detail) == (status, PROBLEM_BASE + slug, "Title", "the detail")
    assert error.errors == fields and error.retry_after == 3.0
    assert error.instance == "/p" and error.response is not None and str(status) in str(error)


def test_the_table_names_every_problem_type_the_server_raises() -> None:
    """A new server problem type needs its row (or a deliberate status fallback, listed here)."""
    raised = set(STATUS_TYPES.values())
    for path in Path(serve_app.__file__).parent.rglob("*.py"):
        raised |= set(re.findall(r'Problem\(\s*\d+,\s*"([a-z-]+)"', path.read_text()))
    assert "validation-error" in raised and "delivery-superseded" in raised  # the scan finds them
    by_status_only = {"method-not-allowed", "http-error"}
    assert raised - by_status_only <= set(PROBLEMS), raised - by_status_only - set(PROBLEMS)


def test_unknown_types_fall_back_to_the_status_then_its_class() -> None:
    assert type(error_from_response(problem(422, "some-new-rule"))) is sw.InvalidRequest
    assert type(error_from_response(problem(429, "rate-limited"))) is sw.RateLimited
    assert type(error_from_response(problem(409, "new-conflict"))) is sw.Conflict
    assert type(error_from_response(problem(418, "teapot"))) is sw.APIError
    assert type(error_from_response(problem(502, "bad-gateway"))) is sw.ServerError


def test_a_non_problem_error_body_still_maps_by_status() -> None:
    error = error_from_response(httpx.Response(502, text="<html>upstream down</html>"))
    assert type(error) is sw.ServerError and error.title == "Bad Gateway" and "upstream down" in (error.detail or "")
    assert error.errors == [] and error.type == "about:blank"


def test_retry_after_seconds_date_and_garbage() -> None:
    assert retry_after_s(response(429, **{"Retry-After": "7"})) == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after_s(response(503, **{"Retry-After": later})) or 0) <= 30
    assert retry_after_s(response(503, **{"Retry-After": "soon"})) is None
    assert retry_after_s(response(503)) is None


def test_retries_honour_retry_after_and_stop_at_the_bound() -> None:
    retries = Retries(attempts=3, max_retry_after_s=60)
    steps: list[Any] = []
    busy = [response(503, **{"Retry-After": "2"}), response(429, **{"Retry-After": "5"}), response(503)]
    with pytest.raises(sw.ServiceUnavailable):
        drive(exchange(Send("POST", "/v1/images", headers={"Idempotency-Key": "k1"}), retries), busy, steps)
    sends = [s for s in steps if isinstance(s, Send)]
    assert [s.seconds for s in steps if isinstance(s, Pause)] == [2.0, 5.0]  # two pauses, three attempts
    assert len(sends) == 3 and {s.headers["Idempotency-Key"] for s in sends} == {"k1"}  # one key for every retry


def test_retry_after_longer_than_allowed_is_raised_at_once_with_its_value() -> None:
    steps: list[Any] = []
    with pytest.raises(sw.RateLimited) as caught:
        drive(exchange(Send("GET", "/v1/images/img_1"), Retries(max_retry_after_s=10)),
              [response(429, **{"Retry-After": "120"})], steps)
    assert caught.value.retry_after == 120.0 and len(steps) == 1


def test_transport_errors_back_off_then_raise_a_transport_error() -> None:
    steps: list[Any] = []
    failing = [httpx.ConnectError("refused")] * 4
    with pytest.raises(sw.TransportError) as caught:
        retries = Retries(attempts=4, backoff_s=1.0, max_backoff_s=3.0)
        drive(exchange(Send("GET", "/v1/models"), retries), failing, steps)
    pauses = [s.seconds for s in steps if isinstance(s, Pause)]
    assert len(pauses) == 3 and 0.5 <= pauses[0] <= 1.0 and 1.0 <= pauses[1] <= 2.0 and 1.5 <= pauses[2] <= 3.0
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_what_retrying_cannot_fix_is_not_retried() -> None:
    for reply in (httpx.UnsupportedProtocol("ftp"), problem(422, "validation-error"), response(500)):
        steps: list[Any] = []
        with pytest.raises(sw.SightwireError):
            drive(exchange(Send("GET", "/x"), Retries()), [reply], steps)
        assert len(steps) == 1


def test_success_after_a_retry_returns_the_response() -> None:
    ok = drive(exchange(Send("GET", "/x"), Retries()), [httpx.ReadTimeout("slow"), response(200, {"a": 1})])
    assert ok.json() == {"a": 1}


def wait_operation(**kwargs: Any) -> Any:
    client = sw.Client("sw_test", polling=Polling(first_s=1.0, max_s=1.5))
    return sw.Client.wait._build(client, "img_1", **kwargs)


def test_wait_backs_off_between_polls_when_the_server_does_not_hold() -> None:
    steps: list[Any] = []
    replies = [response(200, {**IMAGE, "status": s}) for s in ("queued", "processing", "processing", "complete")]
    image = drive(wait_operation(timeout=60), replies, steps)
    assert isinstance(image, sw.Image) and image.status is sw.Status.COMPLETE
    pauses = [s.seconds for s in steps if isinstance(s, Pause)]
    assert len(pauses) == 3 and 0.5 <= pauses[0] <= 1.0 and all(0.75 <= p <= 1.5 for p in pauses[1:])
    first = steps[0]
    assert first.headers["Prefer"].startswith("wait=") and first.hold_s > 59  # asks the server to hold


def test_wait_asks_again_at_once_when_the_server_held_the_request() -> None:
    steps: list[Any] = []
    held = {"Preference-Applied": "wait=60"}
    replies = [response(200, {**IMAGE, "status": status}, **held) for status in ("processing", "partial")]
    image = drive(wait_operation(timeout=120), replies, steps)
    assert image.status is sw.Status.PARTIAL and not [s for s in steps if isinstance(s, Pause)]
    assert steps[0].headers["Prefer"] == "wait=60"


def test_wait_times_out_with_the_last_state() -> None:
    with pytest.raises(sw.WaitTimeout) as caught:
        drive(wait_operation(timeout=0), [response(200, {**IMAGE, "status": "processing"})])
    assert caught.value.record.status is sw.Status.PROCESSING and caught.value.timeout_s == 0


def test_wait_on_a_finished_record_sends_nothing() -> None:
    client = sw.Client("sw_test")
    done = sw.Image.model_validate({**IMAGE, "status": "failed"})
    steps: list[Any] = []
    assert drive(sw.Client.wait._build(client, done), [], steps) is done and steps == []
