"""Frame -> TCP `Segment` by byte slicing: link layer, IPv4/IPv6, TCP.

Hot path, hand-written on purpose: scapy's dissection manages ~3,200 packets/s on these machines
while slicing the headers with `struct` manages ~176,000 (bench/replay_bench.py), and every captured request
start goes through here. Nothing is dissected beyond what a `Segment` needs.

`decode_frame` never raises on bad input: it returns a short reason string instead, which the
pipeline counts (every bad input gets a reason and a counter, never a crash: docs/internals.md).
"""

from __future__ import annotations

import socket
import struct

from cachetap.core.types import Segment

# Link types (pcap LINKTYPE_* numbers).
LINKTYPE_NULL = 0          # BSD loopback: 4-byte address family in the capturing host's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_OPENBSD = 12  # raw IP (DLT_RAW on some BSDs)
LINKTYPE_RAW_BSDOS = 14    # raw IP (DLT_RAW on BSD/OS)
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108        # OpenBSD loopback: address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW_OPENBSD, LINKTYPE_RAW_BSDOS,
                                 LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2})

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})  # 802.1Q, 802.1ad (QinQ), legacy QinQ

# BSD address families for IPv6 differ by OS (Linux, NetBSD/OpenBSD, FreeBSD, macOS).
AF_INET_BSD = 2
AF_INET6_BSD = frozenset({10, 24, 28, 30})

IPPROTO_TCP = 6
# IPv6 extension headers we step over; the fragment header (44) is a reject instead.
IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AH, IPV6_DEST_OPTS = 0, 43, 44, 51, 60
IPV6_SKIPPABLE = frozenset({IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS})

_U16 = struct.Struct("!H")
_TCP_HEAD = struct.Struct("!HHIIBB")  # sport, dport, seq, ack, data offset byte, flags
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_ntop = socket.inet_ntop


def decode_frame(linktype: int, frame: bytes, ts: float) -> Segment | str:
    """Decode one captured frame into a TCP `Segment`, or return the reason it is not one.

    Reasons: ``linktype_<n>``, ``not_ip``, ``not_tcp``, ``ip_fragment``, ``truncated_<layer>``,
    ``bad_ip_version``, ``bad_ipv4_header_length``, ``bad_ip_length``, ``bad_tcp_offset``.
    The payload is trimmed to the IP length, so Ethernet padding never reaches HTTP parsing.
    """
    vlan: int | None = None
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return "truncated_ethernet"
        ethertype = _U16.unpack_from(frame, 12)[0]
        offset = 14
    elif linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return "truncated_sll"
        ethertype = _U16.unpack_from(frame, 14)[0]
        offset = 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return "truncated_sll2"
        ethertype = _U16.unpack_from(frame, 0)[0]
        offset = 20
    elif linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OPENBSD, LINKTYPE_RAW_BSDOS):
        if not frame:
            return "truncated_ip"
        version = frame[0] >> 4
        if version == 4:
            return _decode_ipv4(frame, 0, ts, None)
        if version == 6:
            return _decode_ipv6(frame, 0, ts, None)
        return "bad_ip_version"
    elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if len(frame) < 4:
            return "truncated_loopback"
        if linktype == LINKTYPE_LOOP:
            family = int.from_bytes(frame[:4], "big")
        else:
            # Written in the capturing host's byte order; the families are small numbers.
            family = int.from_bytes(frame[:4], "little")
            if family > 0xFFFF:
                family = int.from_bytes(frame[:4], "big")
        if family == AF_INET_BSD:
            return _decode_ipv4(frame, 4, ts, None)
        if family in AF_INET6_BSD:
            return _decode_ipv6(frame, 4, ts, None)
        return "not_ip"
    else:
        return f"linktype_{linktype}"

    # Any number of VLAN tags (trunk mirror ports, QinQ); the outermost id names the VLAN.
    while ethertype in VLAN_TPIDS:
        if len(frame) < offset + 4:
            return "truncated_vlan"
        if vlan is None:
            vlan = _U16.unpack_from(frame, offset)[0] & 0x0FFF
        ethertype = _U16.unpack_from(frame, offset + 2)[0]
        offset += 4
    if ethertype == ETHERTYPE_IPV4:
        return _decode_ipv4(frame, offset, ts, vlan)
    if ethertype == ETHERTYPE_IPV6:
        return _decode_ipv6(frame, offset, ts, vlan)
    return "not_ip"


def _decode_ipv4(frame: bytes, offset: int, ts: float, vlan: int | None) -> Segment | str:
    available = len(frame) - offset
    if available < 20:
        return "truncated_ipv4"
    first = frame[offset]
    if first >> 4 != 4:
        return "bad_ip_version"
    header_len = (first & 0x0F) * 4
    if header_len < 20:
        return "bad_ipv4_header_length"
    total_len = _U16.unpack_from(frame, offset + 2)[0]
    if total_len == 0:
        # Captured on the sending host with TCP segmentation offload: the length is not filled in yet.
        total_len = available
    if total_len < header_len:
        return "bad_ip_length"
    if available < total_len:
        return "truncated_ipv4"
    if _U16.unpack_from(frame, offset + 6)[0] & 0x3FFF:  # more-fragments flag or a fragment offset
        return "ip_fragment"
    if frame[offset + 9] != IPPROTO_TCP:
        return "not_tcp"
    src = _ntop(_AF_INET, frame[offset + 12:offset + 16])
    dst = _ntop(_AF_INET, frame[offset + 16:offset + 20])
    return _decode_tcp(frame, offset + header_len, offset + total_len, ts, src, dst, vlan)


def _decode_ipv6(frame: bytes, offset: int, ts: float, vlan: int | None) -> Segment | str:
    available = len(frame) - offset
    if available < 40:
        return "truncated_ipv6"
    if frame[offset] >> 4 != 6:
        return "bad_ip_version"
    payload_len = _U16.unpack_from(frame, offset + 4)[0]
    if payload_len == 0:
        payload_len = available - 40  # jumbogram or segmentation offload: trust the capture
    end = offset + 40 + payload_len
    if len(frame) < end:
        return "truncated_ipv6"
    next_header = frame[offset + 6]
    src = _ntop(_AF_INET6, frame[offset + 8:offset + 24])
    dst = _ntop(_AF_INET6, frame[offset + 24:offset + 40])
    position = offset + 40
    while next_header != IPPROTO_TCP:
        if next_header == IPV6_FRAGMENT:
            return "ip_fragment"
        if next_header in IPV6_SKIPPABLE:
            if end < position + 8:
                return "truncated_ipv6"
            ext_len = (frame[position + 1] + 1) * 8
        elif next_header == IPV6_AH:
            if end < position + 8:
                return "truncated_ipv6"
            ext_len = (frame[position + 1] + 2) * 4
        else:
            return "not_tcp"
        next_header = frame[position]
        position += ext_len
        if position > end:
            return "truncated_ipv6"
    return _decode_tcp(frame, position, end, ts, src, dst, vlan)


def _decode_tcp(frame: bytes, offset: int, end: int, ts: float, src: str, dst: str,
                vlan: int | None) -> Segment | str:
    if end - offset < 20:
        return "truncated_tcp"
    sport, dport, seq, ack, data_offset, flags = _TCP_HEAD.unpack_from(frame, offset)
    header_len = (data_offset >> 4) * 4
    if header_len < 20:
        return "bad_tcp_offset"
    if end - offset < header_len:
        return "truncated_tcp"
    return Segment(ts=ts, src=src, dst=dst, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
                   payload=frame[offset + header_len:end], vlan=vlan)
