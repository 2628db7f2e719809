"""Where llmq may send a request chosen by a tenant (webhooks): public addresses only.

A tenant names a URL; llmq connects to it from inside the operator's network. So the host is
resolved and every address it resolves to must be public: loopback, private, link-local,
CGNAT (100.64/10), multicast, unspecified, reserved, documentation, and IPv6 forms that
embed an IPv4 address (mapped, compatible, 6to4, Teredo, NAT64) are refused. The connection
then goes to the address that was checked (`Target.address`), never to a second lookup of
the name, so a DNS answer that changes between check and connect (rebinding) cannot steer
it; the Host header and TLS SNI keep the name. URLs with credentials are refused, and only
https is allowed.

The operator may allow internal receivers with `LLMQ_WEBHOOK_ALLOW`: host names (exact,
case-insensitive) or CIDRs. An allowed host or address skips the address check and may also
use plain http.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the addresses it resolves to, as text."""

RESOLVE_TIMEOUT = 5.0
"""Seconds a lookup may take before the URL counts as unresolvable."""

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class EgressRefused(ValueError):
    """The URL may not be called; the message is safe to show the tenant."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: connect to `address`, present `host` (Host header, TLS SNI)."""

    url: httpx.URL
    host: str
    address: str
    port: int

    @property
    def pinned_url(self) -> httpx.URL:
        """The URL with its host replaced by the checked address."""
        return self.url.copy_with(host=self.address)

    @property
    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer (getaddrinfo, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def forbidden_reason(address: IpAddress) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if address.packed[:12] == bytes(12) and int(address) > 1:
            return "an IPv4-compatible IPv6 address"
        if address.sixtofour is not None or address.teredo is not None:
            return "an IPv6 address that embeds an IPv4 address"
        if address in _NAT64 or address in _NAT64_LOCAL:
            return "a NAT64 address"
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "a CGNAT address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _parse_allow(entries: Iterable[str]) -> tuple[frozenset[str], tuple[IpNetwork, ...]]:
    hosts: set[str] = set()
    networks: list[IpNetwork] = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "/" in entry or ":" in entry or " " in entry:
                raise ValueError(f"webhook_allow: `{entry}` is neither a host nor a CIDR") from None
            hosts.add(entry.lower().rstrip("."))
    return frozenset(hosts), tuple(networks)


class EgressPolicy:
    """Checks a URL and pins its address; `allow` = LLMQ_WEBHOOK_ALLOW."""

    def __init__(self, allow: Iterable[str] = (), resolver: Resolver | None = None) -> None:
        self.hosts, self.networks = _parse_allow(allow)
        self.resolver = resolver or system_resolver

    def parse(self, url: str) -> httpx.URL:
        """The URL's form alone: absolute http(s), a host, no credentials."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise EgressRefused("webhook_url is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise EgressRefused("webhook_url must be an absolute https URL")
        if parsed.userinfo:
            raise EgressRefused("webhook_url must not contain credentials (user:password@)")
        return parsed

    def _allowed(self, host: str, address: IpAddress | None) -> bool:
        if host in self.hosts:
            return True
        return address is not None and any(address in net for net in self.networks)

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                return await self.resolver(host, port)
        except (OSError, TimeoutError, UnicodeError, ValueError):
            raise EgressRefused(f"webhook_url: the host `{host}` cannot be resolved") from None

    async def check(self, url: str) -> Target:
        """Resolve and check `url`; raises `EgressRefused` with a message for the tenant."""
        parsed = self.parse(url)
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            answers = [str(ipaddress.ip_address(host))]  # a literal address needs no lookup
        except ValueError:
            answers = await self._resolve(host, port)
        addresses: list[IpAddress] = []
        for answer in answers:
            try:
                addresses.append(ipaddress.ip_address(answer.split("%", 1)[0]))
            except ValueError:
                continue
        if not addresses:
            raise EgressRefused(f"webhook_url: the host `{host}` cannot be resolved")
        for address in addresses:
            if self._allowed(host, address):
                continue
            reason = forbidden_reason(address)
            if reason is not None:
                raise EgressRefused(
                    f"webhook_url: `{host}` resolves to {reason}; webhooks may only go to "
                    "public addresses"
                )
            if parsed.scheme != "https":
                raise EgressRefused("webhook_url must be an https URL")
        return Target(parsed, host, str(addresses[0]), port)
