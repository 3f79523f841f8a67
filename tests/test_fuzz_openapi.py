"""Property-based fuzz of the whole OpenAPI surface (issue 15, "Also"): Schemathesis generates
requests for every operation from the app's own ``/openapi.json``; none may answer 5xx, and
every response must conform to the document.

The real app (``create_app``) under uvicorn on loopback with the session's real Redis, in a
thread of its own (Schemathesis calls synchronously). Examples per operation are bounded
(``MAX_EXAMPLES``) and derandomised so the run fits the suite and repeats exactly.

No generated URL is fetched. The settings allow no private range, so a generated URL naming
loopback or any internal address is refused by ``check_url``; nothing in this process fetches
images or sends webhooks (no processor; the notifier of this key prefix is not running); and an
audit hook records every DNS lookup and connect made while fuzzing: only loopback (uvicorn,
Redis) may appear.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as examples
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from core.settings import Settings
from core.tokens import new_id
from tests.support.asgi import local_api

# Per operation and generation mode; FUZZ_EXAMPLES=200 for a deeper run by hand.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]

# Lookups and connects made by this process while the fuzz runs (see ``_audit``).
_OUTBOUND: list[str] = []
_FUZZING = threading.Event()


def _loopback(host: object) -> bool:
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _FUZZING.is_set():
        return
    if event == "socket.getaddrinfo" and not _loopback(args[0]):
        _OUTBOUND.append(f"lookup {args[0]}")
    elif event == "socket.connect" and isinstance(args[1], tuple) and not _loopback(args[1][0]):
        _OUTBOUND.append(f"connect {args[1]}")


sys.addaudithook(_audit)


class ApiThread:
    """``local_api`` on an event loop of its own thread, until ``stop``."""

    def __init__(self, api_settings: Settings) -> None:
        self._settings = api_settings
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self.key = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with local_api(self._settings) as api:
            self.url, self.key = api.url, await api.ctx.store.accounts.create_api_key(new_id("org"))
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ApiThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def fuzz_api(settings: Settings) -> Iterator[ApiThread]:
    api_settings = settings.model_copy(update={"key_prefix": new_id("swfuzz"), "allow_private_cidrs": ()})
    with ApiThread(api_settings) as api:
        yield api


@pytest.fixture(scope="module")
def api_schema(fuzz_api: ApiThread) -> Iterator[Any]:
    _FUZZING.set()
    yield schemathesis.openapi.from_url(f"{fuzz_api.url}/openapi.json")
    _FUZZING.clear()


def fuzz(operation: Any, mode: GenerationMode, key: str) -> None:
    """Bounded examples of one operation; the first failing check raises (no shrinking)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @examples(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call(headers={"Authorization": f"Bearer {key}"}, timeout=30)
        case.validate_response(response, checks=CHECKS)  # error bodies too: problem+json, as documented

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_5xx_and_every_response_matches_the_schema(api_schema: Any, fuzz_api: ApiThread,
                                                      mode: GenerationMode) -> None:
    """Every operation, valid requests (positive) and invalid ones (negative); all findings of
    all operations are reported together."""
    findings = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        try:
            fuzz(operation, mode, fuzz_api.key)
        except Unsatisfiable:  # nothing in this operation can be made invalid (no body, free-text path)
            continue
        except (Exception, BaseExceptionGroup) as exc:  # failed checks (a group), with the example
            findings.append(f"{operation.label}: {exc}")
    assert not findings, "\n\n".join(findings)


def test_nothing_was_looked_up_or_connected_outside_loopback(api_schema: Any) -> None:
    assert _OUTBOUND == []
