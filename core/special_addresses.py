"""Every special-purpose address range, in one table with its RFC (SPEC §6).

The rule is "globally routable unicast only". IPv4: an address outside every row is global
unicast. IPv6: an address must also lie in 2000::/3, the global unicast space (RFC 4291 §2.4);
everything else IANA has not allocated is reserved. Sources: the IANA IPv4 and IPv6
Special-Purpose Address Registries and the IPv6 Address Space registry.

Each row either refuses its range, or names how an IPv4 address is embedded in it — only where
that embedding is defined for every address of the range — so that the embedded address is
checked instead. The most specific row wins (Teredo inside 2001::/23). Rows that IANA marks
globally reachable but no image host or webhook receiver ever is (PCP/TURN anycast inside
192.0.0.0/24 and 2001::/23) are refused with their enclosing block.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Embedding = Callable[[ipaddress.IPv6Address], tuple[ipaddress.IPv4Address, ...]]

IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def low_32_bits(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """IPv4-mapped (::ffff:a.b.c.d) and the NAT64 well-known prefix, whose layout is only /96."""
    return (ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF),)


def sixtofour(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD."""
    return (ip.sixtofour,) if ip.sixtofour is not None else ()


def teredo(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """Teredo: the server's address and the (obfuscated) client's; both must pass."""
    return ip.teredo if ip.teredo is not None else ()


@dataclass(frozen=True)
class SpecialRange:
    network: IPNetwork
    name: str
    rfc: str
    embedded: Embedding | None = None  # None: the range is refused

    @property
    def refused(self) -> bool:
        return self.embedded is None


def _row(cidr: str, name: str, rfc: str, embedded: Embedding | None = None) -> SpecialRange:
    return SpecialRange(ipaddress.ip_network(cidr), name, rfc, embedded)


SPECIAL_RANGES: tuple[SpecialRange, ...] = (
    # IPv4
    _row("0.0.0.0/8", "this network", "RFC 791"),
    _row("10.0.0.0/8", "private use", "RFC 1918"),
    _row("100.64.0.0/10", "shared address space (CGNAT)", "RFC 6598"),
    _row("127.0.0.0/8", "loopback", "RFC 1122"),
    _row("169.254.0.0/16", "link local (cloud metadata at 169.254.169.254)", "RFC 3927"),
    _row("172.16.0.0/12", "private use", "RFC 1918"),
    _row("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
    _row("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
    _row("192.88.99.0/24", "6to4 relay anycast (deprecated)", "RFC 7526"),
    _row("192.168.0.0/16", "private use", "RFC 1918"),
    _row("198.18.0.0/15", "benchmarking", "RFC 2544"),
    _row("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
    _row("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
    _row("224.0.0.0/4", "multicast", "RFC 5771"),
    _row("240.0.0.0/4", "reserved", "RFC 1112"),
    _row("255.255.255.255/32", "limited broadcast", "RFC 919"),
    # IPv6
    _row("::/128", "unspecified", "RFC 4291"),
    _row("::1/128", "loopback", "RFC 4291"),
    _row("::/96", "IPv4-compatible (deprecated)", "RFC 4291"),
    _row("::ffff:0:0/96", "IPv4-mapped", "RFC 4291", low_32_bits),
    _row("::ffff:0:0:0/96", "IPv4-translated (SIIT)", "RFC 2765"),
    _row("64:ff9b::/96", "NAT64 well-known prefix", "RFC 6052", low_32_bits),
    # The operator picks the prefix length (/48 to /96), so where the IPv4 sits is unknowable.
    _row("64:ff9b:1::/48", "NAT64 local use", "RFC 8215"),
    _row("100::/64", "discard only", "RFC 6666"),
    _row("100:0:0:1::/64", "dummy prefix", "RFC 9780"),
    _row("2001::/23", "IETF protocol assignments", "RFC 2928"),
    _row("2001::/32", "Teredo", "RFC 4380", teredo),
    _row("2001:2::/48", "benchmarking", "RFC 5180"),
    _row("2001:10::/28", "ORCHID (deprecated)", "RFC 4843"),
    _row("2001:20::/28", "ORCHIDv2", "RFC 7343"),
    _row("2001:db8::/32", "documentation", "RFC 3849"),
    _row("2002::/16", "6to4", "RFC 3056", sixtofour),
    _row("3fff::/20", "documentation", "RFC 9637"),
    _row("5f00::/16", "segment routing (SRv6) SIDs", "RFC 9602"),
    _row("fc00::/7", "unique local", "RFC 4193"),
    _row("fe80::/10", "link local", "RFC 4291"),
    _row("fec0::/10", "site local (deprecated)", "RFC 3879"),
    _row("ff00::/8", "multicast", "RFC 4291"),
)


def special_range(ip: IPAddress) -> SpecialRange | None:
    """The most specific row that holds ``ip``, or ``None`` for an ordinary address."""
    rows = [row for row in SPECIAL_RANGES if row.network.version == ip.version and ip in row.network]
    return max(rows, key=lambda row: row.network.prefixlen, default=None)
