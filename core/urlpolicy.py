"""The one URL policy for image downloads and webhook targets (SPEC §6).

Two checks, at two moments:

* ``check_url`` at request time: scheme, length, host present, no credentials, and, when the
  host is an address literal in any spelling (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``),
  the address itself. Cheap, so bad input is a 422 before anything is stored.
* ``resolve`` at connect time: DNS is resolved (through the policy's ``resolver``), every
  address is checked, and the caller connects to the checked address (see ``core.safe_http``),
  so DNS rebinding has no gap.

The address rule is "globally routable unicast only": ``core.special_addresses`` lists every
special-purpose range with its RFC. Non-global ranges pass only through ``allow_private_cidrs``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from core.failures import Failure
from core.schemas import ErrorCode
from core.settings import IPNetwork, Settings
from core.special_addresses import IPV6_GLOBAL_UNICAST, IPAddress, special_range

ALLOWED_SCHEMES = ("http", "https")
# The plainest URL: a lower-case scheme, an ASCII host name of LDH labels (or a dotted address),
# an optional port, and a path and query of RFC 3986 characters (``%`` only before two hex
# digits). No credentials, no fragment, nothing httpx would re-encode.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
PLAIN_URL = re.compile(
    rf"(?P<scheme>https?)://(?P<host>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?"
    r"(?:[/?](?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*)?"
)
DOTTED_QUAD = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")

# host, port → the addresses to check and connect to. The seam for DNS: tests inject one.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class UrlRejected(Failure):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.URL_FORBIDDEN, message)


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The operating system's resolver, addresses in its order, duplicates dropped.

    A lookup failure may be temporary, so it is ``fetch_failed``, not ``url_forbidden``."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Failure(ErrorCode.FETCH_FAILED, f"cannot resolve {host}: {exc.strerror}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))


def parse_address_literal(host: str) -> IPAddress | None:
    """The address a host string denotes if it is an IP literal, in any spelling libc accepts."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # inet_aton accepts decimal (2130706433), octal (0177.0.0.1), hex (0x7f.1) and short forms.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


# A group's URLs mostly share a few hosts: each host's literal check is made once.
cached_address_literal = functools.lru_cache(maxsize=4096)(parse_address_literal)


@dataclass(frozen=True)
class UrlPolicy:
    allow_private: tuple[IPNetwork, ...] = ()
    max_length: int = 2048
    allowed_schemes: tuple[str, ...] = field(default=ALLOWED_SCHEMES)
    resolver: Resolver = field(default=system_resolver, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(allow_private=settings.allow_private_cidrs, max_length=settings.max_url_length)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` may not be reached (``None``: it may): the special range it is in."""
        if any(ip in net for net in self.allow_private if net.version == ip.version):
            return None
        row = special_range(ip)
        if row is None:
            if ip.version == 6 and ip not in IPV6_GLOBAL_UNICAST:
                return "outside the global unicast space 2000::/3 (RFC 4291)"
            return None
        label = f"{row.name}, {row.rfc}"
        if row.embedded is None:
            return label
        inner = row.embedded(ip) if isinstance(ip, ipaddress.IPv6Address) else ()
        refused = [f"{v4} ({why})" for v4 in inner if (why := self.refusal(v4)) is not None]
        if not inner or refused:
            return f"{label}, embedding {', '.join(refused) or 'no address'}"
        return None

    def is_allowed_address(self, ip: IPAddress) -> bool:
        return self.refusal(ip) is None

    def check_address(self, ip: IPAddress, host: str) -> None:
        reason = self.refusal(ip)
        if reason is not None:
            raise UrlRejected(f"{host} resolves to {ip}, a non-public address ({reason}) that is not allowlisted")

    def check_url(self, url: str) -> None:
        """Validate a URL without touching the network; raise ``UrlRejected`` with the reason.

        A URL in the plainest form (``PLAIN_URL``) is checked from its parts; any other is parsed
        by httpx, as the fetcher will parse it. The plain form is a subset that httpx parses to
        the same scheme, host and no credentials (``tests/test_urlpolicy.py`` holds the two ways
        to the same verdicts), and it is about ten times cheaper: a group checks 10,000 URLs
        before it is accepted."""
        if len(url) > self.max_length:
            raise UrlRejected(f"URL is longer than {self.max_length} characters")
        host = self._plain_host(url)
        if host is None:
            host = self._parsed_host(url)
        literal = cached_address_literal(host)
        if literal is not None:
            self.check_address(literal, host)

    def _plain_host(self, url: str) -> str | None:
        """The host of a plain URL with an allowed scheme and a valid port (lower-cased, as
        httpx gives it); ``None`` for any other URL."""
        plain = PLAIN_URL.fullmatch(url)
        if plain is None or plain["scheme"] not in self.allowed_schemes:
            return None
        if plain["port"] is not None and int(plain["port"]) > 65535:
            return None
        host = plain["host"].lower()
        if "xn--" in host:  # httpx gives an IDNA host decoded
            return None
        if DOTTED_QUAD.fullmatch(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:  # httpx refuses it; let it say why
                return None
        return host

    def _parsed_host(self, url: str) -> str:
        """The host of ``url`` as httpx parses it, once scheme, host and credentials pass."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise UrlRejected(f"not a valid URL: {exc}") from None
        if parsed.scheme not in self.allowed_schemes:
            raise UrlRejected(f"scheme {parsed.scheme or '(none)'!r} is not allowed; use http or https")
        if not parsed.host:
            raise UrlRejected("URL has no host")
        if parsed.userinfo:
            raise UrlRejected("credentials in URLs are not allowed")
        return parsed.host

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` once and check every address it has; all must pass, in resolver
        order. The caller connects to these addresses, never to the name again."""
        addresses = await self.resolver(host, port)
        if not addresses:
            raise Failure(ErrorCode.FETCH_FAILED, f"{host} has no addresses")
        for ip in addresses:
            self.check_address(ip, host)
        return addresses
