"""Which addresses cachetap may connect to when it probes or downloads (the fetch guard).

Every URL cachetap fetches was first seen on the wire, so an attacker on the LAN chooses it. Left
alone, a forged `Host: 127.0.0.1:6379` or a DNS name that resolves to 10.0.0.1 would make cachetap
fetch from a service only this machine (or only the inside network) can reach, and then hand the
bytes to anyone who asks for the key. So an address is refused unless it is a plain public unicast
address, or the operator listed a network holding it in `fetch_allow_networks`:

  always refused: unspecified (0.0.0.0 and :: reach this machine), multicast, broadcast, reserved;
  refused unless listed: loopback, link-local, this machine's own addresses, private ranges,
  shared address space (100.64.0.0/10).

IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses are judged by the
IPv4 address they carry: Python's `ipaddress` calls `::ffff:127.0.0.1` neither loopback nor private.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAT64 = ipaddress.ip_network("64:ff9b::/96")
SHARED = ipaddress.ip_network("100.64.0.0/10")
BROADCAST = ipaddress.ip_address("255.255.255.255")


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def refusal(address: str, allow: Iterable[IPNetwork], own: Collection[IPAddress] = ()) -> str | None:
    """Why we must not connect to `address` (a short reason), or None when it is allowed.

    `allow` is the operator's `fetch_allow_networks`; `own` the addresses of this machine's interfaces.
    """
    raw = _raw(address)
    if raw is None:
        return "not_an_address"
    addr = unwrap(raw)  # a wrapper (mapped, NAT64, 6to4) is judged by the address it carries
    reason = _always_refused(addr)
    if reason is not None:
        return reason
    if any(candidate in net for net in allow for candidate in {addr, raw} if candidate.version == net.version):
        return None
    return _refused_unless_listed(addr, own)


def allowed(addresses: Iterable[str], allow: Iterable[IPNetwork],
            own: Collection[IPAddress] = ()) -> tuple[list[str], dict[str, str]]:
    """(addresses we may connect to, {refused address: reason}), order kept."""
    allow = list(allow)
    ok: list[str] = []
    refused: dict[str, str] = {}
    for address in addresses:
        reason = refusal(address, allow, own)
        if reason is None:
            ok.append(address)
        else:
            refused[address] = reason
    return ok, refused


def port_matches(url: str, destination_port: int) -> bool:
    """Whether the URL's port (from the Host header or an absolute target) is the TCP destination port.

    A request sent to port 80 that names `Host: example.org:6379` must not make us fetch port 6379.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (80 if parts.scheme == "http" else None)
    except ValueError:
        return False
    return port is not None and port == destination_port


def _raw(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(str(text).strip())
    except ValueError:
        return None


def _always_refused(addr: IPAddress) -> str | None:
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_multicast:
        return "multicast"
    if addr == BROADCAST:
        return "broadcast"
    if isinstance(addr, ipaddress.IPv4Address) and addr.is_reserved:  # IPv6's ::/8 holds ::1
        return "reserved"
    return None


def _refused_unless_listed(addr: IPAddress, own: Collection[IPAddress]) -> str | None:
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link_local"
    if addr in own:
        return "own_address"
    if isinstance(addr, ipaddress.IPv4Address) and addr in SHARED:
        return "shared"
    if addr.is_private or getattr(addr, "is_site_local", False):
        return "private"
    return None
