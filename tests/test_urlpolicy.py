"""The URL policy: every spelling of a forbidden address is refused, allowlisted ranges pass."""

from __future__ import annotations

import ipaddress

import pytest

from core.failures import Failure
from core.safe_http import safe_client
from core.schemas import ErrorCode
from core.urlpolicy import UrlPolicy, UrlRejected, parse_address_literal

STRICT = UrlPolicy()
LOOPBACK_ALLOWED = UrlPolicy(allow_private=(ipaddress.ip_network("127.0.0.0/8"),))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/",
        "http://127.0.0.1/a.png",
        "http://2130706433/a.png",  # decimal 127.0.0.1
        "http://0x7f000001/a.png",  # hex
        "http://0177.0.0.1/a.png",  # octal
        "http://127.1/a.png",  # short form
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # CGNAT
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",  # reserved
        "http://[::1]/",
        "http://[::]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://user:pass@example.com/",
        "http:///nohost",
        "not a url",
    ],
)
def test_forbidden_urls_are_rejected(url: str) -> None:
    with pytest.raises(UrlRejected):
        STRICT.check_url(url)


@pytest.mark.parametrize("url", ["http://example.com/a.png", "https://8.8.8.8/x", "http://[2606:4700::1111]/"])
def test_public_urls_pass(url: str) -> None:
    STRICT.check_url(url)


def test_overlong_url_is_rejected() -> None:
    with pytest.raises(UrlRejected, match="longer"):
        UrlPolicy(max_length=30).check_url("http://example.com/" + "a" * 40)


def test_allowlist_admits_only_its_ranges() -> None:
    LOOPBACK_ALLOWED.check_url("http://127.0.0.1:8080/x")
    LOOPBACK_ALLOWED.check_url("http://2130706433/x")
    LOOPBACK_ALLOWED.check_url("http://[::ffff:127.0.0.1]/x")
    with pytest.raises(UrlRejected):
        LOOPBACK_ALLOWED.check_url("http://169.254.169.254/")


def test_address_literal_spellings() -> None:
    assert parse_address_literal("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert parse_address_literal("0x7f.1") == ipaddress.ip_address("127.0.0.1")
    assert parse_address_literal("[::1]") == ipaddress.ip_address("::1")
    assert parse_address_literal("example.com") is None


async def test_hostnames_are_resolved_and_checked_at_connect() -> None:
    """``localhost`` passes the syntactic check but is refused when the connection is made."""
    STRICT.check_url("http://localhost:9/x")
    async with safe_client(STRICT, timeout=2, follow_redirects=False) as client:
        with pytest.raises(UrlRejected, match=r"127\.0\.0\.1|::1"):
            await client.get("http://localhost:9/x")


async def test_connection_goes_to_the_checked_address(image_host) -> None:
    """With loopback allowlisted, ``localhost`` connects (to the address that was checked)."""
    image_host.put("/pinned.txt", b"pinned", content_type="text/plain")
    policy = UrlPolicy(allow_private=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))
    async with safe_client(policy, timeout=5, follow_redirects=False) as client:
        response = await client.get(f"http://localhost:{image_host.port}/pinned.txt")
    assert response.status_code == 200
    assert response.content == b"pinned"


async def test_unresolvable_host_is_a_fetch_failure_not_forbidden() -> None:
    with pytest.raises(Failure, match="cannot resolve") as caught:
        await STRICT.resolve("no-such-host.invalid", 80)
    assert caught.value.code is ErrorCode.FETCH_FAILED
