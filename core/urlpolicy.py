"""The one URL policy for image downloads and webhook targets (SPEC §6).

Two checks, at two moments:

* ``check_url`` at request time: scheme, length, host present, no credentials, and, when the
  host is an address literal in any spelling (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``),
  the address itself. Cheap, so bad input is a 422 before anything is stored.
* ``resolve`` at connect time: DNS is resolved, every address is checked, and the caller
  connects to the checked address (see ``core.safe_http``), so DNS rebinding has no gap.

Private, loopback and other non-global ranges pass only through ``allow_private_cidrs``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

import httpx

from core.failures import Failure
from core.schemas import ErrorCode
from core.settings import IPNetwork, Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = ("http", "https")
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class UrlRejected(Failure):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.URL_FORBIDDEN, message)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address smuggles: mapped, NAT64, 6to4 and Teredo forms."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if any(ip in net for net in NAT64_PREFIXES):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


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


@dataclass(frozen=True)
class UrlPolicy:
    allow_private: tuple[IPNetwork, ...] = ()
    max_length: int = 2048
    allowed_schemes: tuple[str, ...] = field(default=ALLOWED_SCHEMES)

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(allow_private=settings.allow_private_cidrs, max_length=settings.max_url_length)

    def is_allowed_address(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self.allow_private if net.version == ip.version):
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            inner = embedded_ipv4(ip)
            if inner:
                return all(self.is_allowed_address(v4) for v4 in inner)
        return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)

    def check_address(self, ip: IPAddress, host: str) -> None:
        if not self.is_allowed_address(ip):
            raise UrlRejected(f"{host} resolves to {ip}, a non-public address that is not allowlisted")

    def check_url(self, url: str) -> httpx.URL:
        """Validate a URL without touching the network; raise ``UrlRejected`` with the reason."""
        if len(url) > self.max_length:
            raise UrlRejected(f"URL is longer than {self.max_length} characters")
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
        literal = parse_address_literal(parsed.host)
        if literal is not None:
            self.check_address(literal, parsed.host)
        return parsed

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` and check every address it has; all must pass, in resolver order.

        A lookup failure may be temporary, so it is ``fetch_failed``, not ``url_forbidden``."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Failure(ErrorCode.FETCH_FAILED, f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))
        if not addresses:
            raise Failure(ErrorCode.FETCH_FAILED, f"{host} has no addresses")
        for ip in addresses:
            self.check_address(ip, host)
        return addresses
