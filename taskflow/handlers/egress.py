"""The egress guard: which addresses a download may connect to.

Every address a host name resolves to must be public, unless the settings
allow private targets (``download_allow_private``): loopback, private,
link-local, multicast, reserved, unspecified, shared (CGNAT) and documentation
ranges are refused, for IPv4 and IPv6, including IPv4 embedded in IPv6
(mapped ``::ffff:a.b.c.d``, NAT64, 6to4, Teredo). Host names are resolved by
the system resolver, so spellings like ``2130706433``, ``0x7f.1`` or
``localhost`` end up as the address they really mean. The caller connects to
the address that was checked (``taskflow.handlers.download_files``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

from taskflow.config import Settings
from taskflow.errors import PermanentError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def non_public_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public internet address, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # The socket talks IPv4 to the mapped address: judge that one alone.
            reason = non_public_reason(address.ipv4_mapped)
            return f"{reason} (IPv4-mapped)" if reason is not None else None
        embedded: ipaddress.IPv4Address | None = None
        if address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.sixtofour is not None:
            embedded = address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            reason = non_public_reason(embedded)
            if reason is not None:
                return f"{reason} (embedded {embedded})"
    checks = (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
        ("is_site_local", "site-local"),
    )
    for attribute, label in checks:
        if getattr(address, attribute, False):
            return label
    if not address.is_global:
        return "non-global"
    return None


@dataclass(frozen=True)
class AddressGuard:
    """Decides which addresses downloads may connect to.

    ``trusted`` lists exact ``(ip, port)`` pairs treated as public even when
    they are not: a seam for tests and for an operator's internal mirror.
    """

    allow_private: bool = False
    trusted: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressGuard:
        return cls(allow_private=settings.download_allow_private)

    def refusal(self, address: IPAddress, port: int) -> str | None:
        if self.allow_private or (str(address), port) in self.trusted:
            return None
        return non_public_reason(address)


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(host: str, port: int, timeout_seconds: float) -> list[IPAddress]:
    """Every address ``host`` stands for, in the resolver's order."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_seconds
        )
    except TimeoutError:
        raise TransientError(f"resolving {host} timed out") from None
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise TransientError(f"cannot resolve {host}: {exc.strerror}") from None
        raise PermanentError(f"cannot resolve {host}: {exc.strerror}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonical, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise PermanentError(f"{host} has no addresses")
    return addresses
