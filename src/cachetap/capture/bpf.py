"""The kernel filter: only the first segment of HTTP GET/HEAD requests reaches Python.

A busy mirror port carries gigabits of response data; matching the first payload bytes in BPF keeps
all of it in the kernel. Consequence: continuation segments of a head split over several segments
never reach the live capture (reassembly counts those heads "incomplete"); replaying a file without
the filter sees them all.
"""

from __future__ import annotations

GET = 0x47455420   # "GET "
HEAD = 0x48454144  # "HEAD", followed by a space
SPACE = 0x20
LINKTYPE_ETHERNET = 1


def _tcp_payload_starts(payload: str) -> str:
    """Payload-start test, given an expression for the payload's byte offset in `tcp[]`."""
    return (f"(tcp[{payload}:4] = {GET:#x} or "
            f"(tcp[{payload}:4] = {HEAD:#x} and tcp[{payload} + 4:1] = {SPACE:#x}))")


def _ipv4_branch(ports: str) -> str:
    payload = "((tcp[12:1] & 0xf0) >> 2)"
    return f"(ip and tcp and ({ports}) and {_tcp_payload_starts(payload)})"


def _ipv6_branch(ports: str) -> str:
    # libpcap has no tcp[] on IPv6: index from the IPv6 header instead. TCP starts at byte 40 when
    # there are no extension headers (ip6[6] = 6, next header TCP); its data offset is at ip6[52].
    payload = "(40 + ((ip6[52:1] & 0xf0) >> 2))"
    return (f"(ip6 and ip6[6:1] = 6 and ({ports}) and "
            f"(ip6[{payload}:4] = {GET:#x} or "
            f"(ip6[{payload}:4] = {HEAD:#x} and ip6[{payload} + 4:1] = {SPACE:#x})))")


def request_filter(ports: list[int], linktype: int = LINKTYPE_ETHERNET) -> str:
    """A libpcap filter expression passing only request starts (GET and HEAD) to `ports`.

    Branches: plain IPv4 and IPv6, then the same behind one VLAN tag, then behind a second one
    (QinQ). libpcap's `vlan` keyword shifts the offsets of everything after it in the expression,
    whatever the parentheses say, so the tagged branches come last and the second `vlan` (already
    shifted once by the first) tests the inner tag. On a live socket the kernel has already taken the
    outer tag off, so tagged frames match the earlier branches there.
    libpcap knows VLAN tags only on Ethernet: for another `linktype` (cooked, raw IP) the tagged
    branches are left out, or the filter would not compile there.
    """
    if not ports:
        raise ValueError("request_filter needs at least one port")
    bad = [p for p in ports if not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536]
    if bad:
        raise ValueError(f"ports must be integers 1-65535, got {bad}")
    port_test = " or ".join(f"tcp dst port {p}" for p in sorted(set(ports)))
    untagged = f"{_ipv4_branch(port_test)} or {_ipv6_branch(port_test)}"
    if linktype != LINKTYPE_ETHERNET:
        return untagged
    return f"({untagged}) or (vlan and ({untagged})) or (vlan and ({untagged}))"
