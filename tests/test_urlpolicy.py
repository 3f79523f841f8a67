"""The URL policy: every spelling of a forbidden address is refused, allowlisted ranges pass,
every special-purpose range is refused (or judged by the IPv4 it embeds) before any connection,
and a connection goes to the address that was checked."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import replace

import httpcore
import httpx
import pytest

from core.failures import Failure
from core.safe_http import PolicyTransport, safe_client
from core.schemas import ErrorCode
from core.special_addresses import (
    SPECIAL_RANGES,
    IPAddress,
    SpecialRange,
    low_32_bits,
    sixtofour,
    special_range,
    teredo,
)
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


# --- Every special-purpose range (core.special_addresses), refused before any connection ---

PUBLIC_V4 = ipaddress.IPv4Address("8.8.8.8")
FORBIDDEN_V4 = [ipaddress.IPv4Address(a) for a in ("169.254.169.254", "127.0.0.1", "10.0.0.1", "192.88.99.1")]


def samples(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[IPAddress]:
    """The first, a middle and the last address of a range."""
    return list(dict.fromkeys([network.network_address, network[network.num_addresses // 2 + 1]
                               if network.num_addresses > 2 else network.network_address,
                               network.broadcast_address]))


def embed(row: SpecialRange, v4: ipaddress.IPv4Address, server: ipaddress.IPv4Address = PUBLIC_V4) -> IPAddress:
    """An address of ``row`` that carries ``v4`` the way the row's embedding reads it."""
    base = int(row.network.network_address)
    if row.embedded is low_32_bits:
        return ipaddress.IPv6Address(base | int(v4))
    if row.embedded is sixtofour:
        return ipaddress.IPv6Address(base | int(v4) << 80 | 0xBEEF)
    if row.embedded is teredo:  # server at bits 32..63, client inverted in the low 32 bits
        return ipaddress.IPv6Address(base | int(server) << 64 | 0x8000_1234 << 32 | (~int(v4) & 0xFFFF_FFFF))
    raise AssertionError(f"no test embedding for {row.name}: add one")


async def refused_at_resolve(policy: UrlPolicy, ip: IPAddress) -> bool:
    """Resolve a hostname whose DNS answers ``ip``: refused before anything connects."""

    async def answer(host: str, port: int) -> list[IPAddress]:
        return [ip]

    try:
        await replace(policy, resolver=answer).resolve("special.test", 443)
    except UrlRejected:
        return True
    return False


REFUSED_ROWS = [row for row in SPECIAL_RANGES if row.refused]
EMBEDDING_ROWS = [row for row in SPECIAL_RANGES if not row.refused]


@pytest.mark.parametrize("row", REFUSED_ROWS, ids=lambda row: f"{row.network} {row.rfc}")
async def test_every_refused_range_is_refused(row: SpecialRange) -> None:
    for ip in samples(row.network):
        assert special_range(ip) is not None
        assert not STRICT.is_allowed_address(ip), f"{ip} ({row.name}) passed"
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        with pytest.raises(UrlRejected, match=row.rfc if special_range(ip) is row else "RFC"):
            STRICT.check_url(f"http://{host}/a.png")
        assert await refused_at_resolve(STRICT, ip)


@pytest.mark.parametrize("row", EMBEDDING_ROWS, ids=lambda row: f"{row.network} {row.rfc}")
async def test_every_embedding_range_is_judged_by_the_embedded_ipv4(row: SpecialRange) -> None:
    public = embed(row, PUBLIC_V4)
    assert special_range(public) is row
    assert STRICT.is_allowed_address(public), f"{public} embeds {PUBLIC_V4} and should pass"
    assert not await refused_at_resolve(STRICT, public)
    for v4 in FORBIDDEN_V4:
        ip = embed(row, v4)
        assert special_range(ip) is row
        assert not STRICT.is_allowed_address(ip), f"{ip} embeds {v4} and passed"
        assert await refused_at_resolve(STRICT, ip)


def test_teredo_needs_both_server_and_client_public() -> None:
    [row] = [r for r in EMBEDDING_ROWS if r.embedded is teredo]
    assert not STRICT.is_allowed_address(embed(row, PUBLIC_V4, server=ipaddress.IPv4Address("127.0.0.1")))
    assert not STRICT.is_allowed_address(embed(row, ipaddress.IPv4Address("10.1.2.3")))


def rfc6052(prefix: str, length: int, v4: str, suffix: int = 0x0808_0808) -> ipaddress.IPv6Address:
    """An RFC 6052 address: ``v4`` at the place a /``length`` prefix puts it (bits 64..71 zero)."""
    bits = int(ipaddress.IPv4Address(v4))
    base = int(ipaddress.IPv6Address(prefix))
    if length == 96:
        return ipaddress.IPv6Address(base | bits)
    head_bits = 64 - length  # what of the IPv4 fits before the reserved octet
    head, tail = bits >> (32 - head_bits), bits & ((1 << (32 - head_bits)) - 1)
    tail_shift = 56 - (32 - head_bits)
    return ipaddress.IPv6Address(base | head << 64 | tail << tail_shift | (suffix & ((1 << tail_shift) - 1)))


@pytest.mark.parametrize("length", [48, 56, 64, 96])
@pytest.mark.parametrize("v4", ["169.254.169.254", "127.0.0.1", "8.8.8.8"])
async def test_nat64_local_use_is_refused_in_every_layout(length: int, v4: str) -> None:
    """RFC 8215's 64:ff9b:1::/48 lets the operator pick the layout, so no embedded address can
    be trusted: refused whatever it carries. Before, its low 32 bits were read as the address,
    so a /48 layout carrying 169.254.169.254 with 8.8.8.8 in its suffix passed."""
    ip = rfc6052("64:ff9b:1::", length, v4)
    assert not STRICT.is_allowed_address(ip)
    with pytest.raises(UrlRejected, match="RFC 8215"):
        STRICT.check_url(f"http://[{ip}]/latest/meta-data/")
    assert await refused_at_resolve(STRICT, ip)


@pytest.mark.parametrize(
    "address",
    ["64:ff9b:1:a9fe:a9:fe00:808:808",  # NAT64 local use, /48 layout, 169.254.169.254 (issue 15)
     "64:ff9b:1:7f00:0:100:808:808",  # the same with 127.0.0.1
     "64:ff9b:1::a9fe:a9fe", "fec0::1", "fec0:1:2:3::4", "192.88.99.1", "192.0.0.9",
     "::127.0.0.1", "::ffff:0:7f00:1", "100::1", "2001:db8::1", "3fff::1", "4000::1", "1::1", "::2"],
)
def test_known_bad_addresses_are_refused(address: str) -> None:
    assert not STRICT.is_allowed_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111",
                                     "2a00:1450:4001:81b::200e", "64:ff9b::808:808", "::ffff:8.8.8.8"])
def test_global_unicast_passes(address: str) -> None:
    assert STRICT.is_allowed_address(ipaddress.ip_address(address))


def test_the_layout_helper_matches_rfc_6052_examples() -> None:
    """RFC 6052 §2.4 examples for 192.0.2.33 under 2001:db8::/32-style prefixes, moved to ours."""
    assert rfc6052("2001:db8:100::", 40, "192.0.2.33", 0) == ipaddress.ip_address("2001:db8:1c0:2:21::")
    assert rfc6052("2001:db8:122::", 48, "192.0.2.33", 0) == ipaddress.ip_address("2001:db8:122:c000:2:2100::")
    assert rfc6052("2001:db8:122:300::", 56, "192.0.2.33", 0) == ipaddress.ip_address("2001:db8:122:3c0:0:221::")
    assert rfc6052("2001:db8:122:344::", 64, "192.0.2.33", 0) == ipaddress.ip_address("2001:db8:122:344:c0:2:2100:0")
    assert rfc6052("2001:db8:122:344::", 96, "192.0.2.33") == ipaddress.ip_address("2001:db8:122:344::192.0.2.33")


# --- DNS rebinding: the connection goes to the address that was checked ---

class RebindingDns:
    """A rebinding attacker's DNS: each lookup of any name gets the next answer (the last repeats)."""

    def __init__(self, *answers: str) -> None:
        self.answers = [ipaddress.ip_address(a) for a in answers]
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        return [self.answers[min(len(self.lookups), len(self.answers)) - 1]]


class LoopbackOnlyNetwork(httpcore.AsyncNetworkBackend):
    """The network under the policy, as a test may use it: names resolve through the test's DNS
    (as the OS would for a client that connects by name), loopback connections are real, and a
    connection anywhere else is recorded and refused, so no traffic leaves the machine."""

    def __init__(self, dns: RebindingDns) -> None:
        self.dns = dns
        self.connects: list[str] = []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = parse_address_literal(host) or (await self.dns(host, port))[0]
        self.connects.append(str(address))
        if not address.is_loopback:
            raise httpcore.ConnectError(f"test network: {address} is off loopback, not connecting")
        return await self._real.connect_tcp(str(address), port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


async def get_rebound(policy: UrlPolicy, dns: RebindingDns, url: str) -> tuple[httpx.Response, LoopbackOnlyNetwork]:
    """GET ``url`` through ``policy`` resolving with ``dns``; the response and where it connected."""
    network = LoopbackOnlyNetwork(dns)
    transport = PolicyTransport(replace(policy, resolver=dns), network=network)
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        try:
            return await client.get(url), network
        except httpx.ConnectError as exc:
            exc.add_note(f"connected to {network.connects}")
            raise


async def test_rebinding_to_loopback_after_the_check_is_not_followed(image_host) -> None:
    """DNS answers a public address to the check and loopback to any later lookup: the client
    connects to the public address it checked (refused here, off loopback) and never to the
    loopback server that is really listening on that port."""
    image_host.put("/internal", b"internal secret", content_type="text/plain")
    dns = RebindingDns("93.184.216.34", "127.0.0.1")
    with pytest.raises(httpx.ConnectError, match=r"93\.184\.216\.34 is off loopback"):
        await get_rebound(STRICT, dns, f"http://rebind.test:{image_host.port}/internal")
    assert dns.lookups == ["rebind.test"]


async def test_rebinding_to_metadata_after_the_check_is_not_followed(image_host) -> None:
    """With loopback allowlisted: checked 127.0.0.1, rebound to 169.254.169.254 — the request
    is served by the loopback host that was checked."""
    image_host.put("/pinned.txt", b"pinned", content_type="text/plain")
    dns = RebindingDns("127.0.0.1", "169.254.169.254")
    response, network = await get_rebound(LOOPBACK_ALLOWED, dns, f"http://rebind.test:{image_host.port}/pinned.txt")
    assert response.status_code == 200 and response.content == b"pinned"
    assert response.request.headers["host"] == f"rebind.test:{image_host.port}"
    assert network.connects == ["127.0.0.1"]
    assert dns.lookups == ["rebind.test"]


PLAIN_HOSTS = ["example.com", "EXAMPLE.Com", "a-b.c", "127.0.0.1", "1.2.3.999", "010.0.0.1", "2130706433", "0x7f.1",
               "0X7F.1", "xn--bcher-kva.example", "1e100", "a.b.c.d.e", "localhost", "8.8.8.8", "255.255.255.255"]
PLAIN_PORTS = ["", ":0", ":80", ":65535", ":65536", ":99999"]
PLAIN_PATHS = ["", "/", "/a/b.jpg", "?x=1&y=2", "/a%20b", "/a%zz", "/p@x:1", "/a;b=c,d", "/'()*!$~", "/a?b?c//d"]


def test_a_plain_url_has_the_host_httpx_gives_it() -> None:
    """``check_url``'s fast way (``_plain_host``) and httpx's parse agree on every plain URL:
    the same host, and no refusal of scheme, host or credentials by the parse."""
    urls = [f"{scheme}://{host}{port}{path}" for scheme in ("http", "https") for host in PLAIN_HOSTS
            for port in PLAIN_PORTS for path in PLAIN_PATHS]
    rng = random.Random(7)
    alphabet = "abcxyzAZ019-._~!$&'()*+,;=:@/?%"
    urls += ["http://" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(20_000)]
    plain = [url for url in urls if LOOPBACK_ALLOWED._plain_host(url) is not None]
    assert len(plain) > 1_500
    for url in plain:
        assert LOOPBACK_ALLOWED._plain_host(url) == LOOPBACK_ALLOWED._parsed_host(url), url


@pytest.mark.parametrize("url", ["http://1.2.3.999/", "http://example.com:65536/", "ftp://example.com/",
                                 "HTTP://example.com/", "http://a..b/", "http://exa mple.com/", "http://ex_ample.com/#f"])
def test_what_is_not_plain_goes_to_httpx(url: str) -> None:
    assert LOOPBACK_ALLOWED._plain_host(url) is None
