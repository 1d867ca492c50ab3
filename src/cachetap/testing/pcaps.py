"""Build real HTTP conversations with scapy and write them as pcap/pcapng files, for tests.

Shipped with the package so every test (link layers, BPF, reassembly, the replay CLI) uses the same
well-formed and hostile traffic. Packets are scapy `Ether` frames (optionally VLAN-tagged); the writers
turn them into the frames of any supported link type.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW = 0, 1, 101
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
START_TS = 1_700_000_000.0
MSS = 1460

PacketLike = Packet | bytes  # bytes: an already-built Ethernet frame (used for hostile input)


def request_bytes(method: str, host: str | None, target: str, headers: dict[str, str] | None = None,
                  body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """One HTTP/1.x request head (plus body) as it goes on the wire; `host=None` sends no Host."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def http_get_packets(client: str, server: str, host: str | None, target: str, *,
                     headers: dict[str, str] | None = None, method: str = "GET", body: bytes = b"",
                     vlan: int | Sequence[int] | None = None, split_at: int | Sequence[int] | None = None,
                     pipelined: Sequence[str] = (), handshake: bool = True, response_bytes: int = 0,
                     client_port: int = 40000, server_port: int = 80, start: float = START_TS,
                     client_isn: int = 1000, server_isn: int = 5000) -> list[Packet]:
    """A TCP conversation carrying one request (and `pipelined` extra GETs for other targets).

    IPv6 when the addresses contain ':'. `vlan` is one 802.1Q id or a sequence of ids (outermost
    first; the outer tag of a stack is 802.1ad, as on a QinQ trunk). The request bytes (all pipelined
    heads back to back) are cut at the `split_at` offsets, or every MSS bytes; with no split they go
    in one segment. `response_bytes` adds a 200 response from the server, MSS-sized segments each
    acknowledged by the client. Packets carry increasing `.time` from `start`, 1 ms apart.
    """
    payload = request_bytes(method, host, target, headers, body)
    payload += b"".join(request_bytes("GET", host, extra, headers) for extra in pipelined)
    cuts = _cut_points(len(payload), split_at)
    chunks = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]

    def c2s(flags: str, seq: int, ack: int, data: bytes = b"") -> Packet:
        return _frame(client, server, client_port, server_port, flags, seq, ack, data, vlan, CLIENT_MAC, SERVER_MAC)

    def s2c(flags: str, seq: int, ack: int, data: bytes = b"") -> Packet:
        return _frame(server, client, server_port, client_port, flags, seq, ack, data, vlan, SERVER_MAC, CLIENT_MAC)

    packets: list[Packet] = []
    cseq, sseq = client_isn + 1, server_isn + 1
    if handshake:
        packets += [c2s("S", client_isn, 0), s2c("SA", server_isn, cseq), c2s("A", cseq, sseq)]
    for chunk in chunks:
        packets.append(c2s("PA", cseq, sseq, chunk))
        cseq += len(chunk)
    if response_bytes:
        response = (f"HTTP/1.1 200 OK\r\nContent-Length: {response_bytes}\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"\xa5" * response_bytes
        for offset in range(0, len(response), MSS):
            data = response[offset:offset + MSS]
            packets.append(s2c("PA" if offset + MSS >= len(response) else "A", sseq, cseq, data))
            sseq += len(data)
            packets.append(c2s("A", cseq, sseq))
    for index, packet in enumerate(packets):
        packet.time = start + index / 1000
    return packets


def _cut_points(length: int, split_at: int | Sequence[int] | None) -> list[int]:
    if split_at is None:
        return list(range(MSS, length, MSS)) if length > 4 * MSS else []
    points = [split_at] if isinstance(split_at, int) else list(split_at)
    return sorted(p for p in set(points) if 0 < p < length)


def _frame(src: str, dst: str, sport: int, dport: int, flags: str, seq: int, ack: int, data: bytes,
           vlan: int | Sequence[int] | None, src_mac: str, dst_mac: str) -> Packet:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    l3 = ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq % 2**32, ack=ack % 2**32, window=65535)
    if data:
        l3 = l3 / Raw(data)
    return with_vlan(Ether(src=src_mac, dst=dst_mac), vlan) / l3


def with_vlan(ether: Packet, vlan: int | Sequence[int] | None) -> Packet:
    """Add VLAN tags after `ether`: one id is an 802.1Q tag; a stack starts with an 802.1ad tag."""
    ids = [] if vlan is None else [vlan] if isinstance(vlan, int) else list(vlan)
    for index, vid in enumerate(ids):
        ether = ether / (Dot1AD(vlan=vid) if index == 0 and len(ids) > 1 else Dot1Q(vlan=vid))
    return ether


# ---- link types -------------------------------------------------------------------------------

def frame_bytes(packet: PacketLike, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """The bytes of `packet` (an `Ether` frame, or a bare IP/IPv6 packet) framed for `linktype`.

    SLL/SLL2 keep VLAN tags (protocol 0x8100, as libpcap writes them); raw IP and BSD loopback drop
    them. Bytes are taken to be an Ethernet frame already and are only accepted for Ethernet.
    """
    if isinstance(packet, bytes):
        if linktype != LINKTYPE_ETHERNET:
            raise ValueError("raw bytes are Ethernet frames; build a scapy packet for other link types")
        return packet
    if not isinstance(packet, Ether):
        packet = Ether(src=CLIENT_MAC, dst=SERVER_MAC) / packet
    if linktype == LINKTYPE_ETHERNET:
        return bytes(packet)
    inner = packet.payload
    if linktype == LINKTYPE_LINUX_SLL:
        return bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=_mac_bytes(packet.src),
                                 proto=packet.type) / inner)
    if linktype == LINKTYPE_LINUX_SLL2:
        return bytes(CookedLinuxV2(proto=packet.type, ifindex=2, lladdrtype=1, pkttype=0, lladdrlen=6,
                                   src=_mac_bytes(packet.src)) / inner)
    while isinstance(inner, (Dot1Q, Dot1AD)):
        inner = inner.payload
    if linktype == LINKTYPE_RAW:
        return bytes(inner)
    if linktype == LINKTYPE_NULL:
        family = 30 if isinstance(inner, IPv6) else 2  # macOS's AF_INET6; written little-endian
        return struct.pack("<I", family) + bytes(inner)
    raise ValueError(f"no framing for link type {linktype}")


def _ether(**fields) -> Ether:
    return Ether(src=CLIENT_MAC, dst=SERVER_MAC, **fields)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "")) + b"\x00\x00"


def _ts_of(packet: PacketLike, index: int) -> Decimal:
    value = getattr(packet, "time", None)
    return Decimal(str(value)) if value is not None else Decimal(str(START_TS)) + Decimal(index) / 1000


# ---- writers ------------------------------------------------------------------------------------

def write_capture(path: str | Path, packets: Iterable[PacketLike], linktype: int = LINKTYPE_ETHERNET, *,
                  nano: bool = False, big_endian: bool = False, snaplen: int = 262144) -> Path:
    """Write a classic pcap file (micro- or nanosecond, either byte order) of `packets` as `linktype`.

    Timestamps come from each packet's `.time` (bytes get 1 ms steps from START_TS).
    """
    endian = ">" if big_endian else "<"
    scale = 10**9 if nano else 10**6
    out = bytearray(struct.pack(endian + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0,
                                snaplen, linktype))
    for index, packet in enumerate(packets):
        data = frame_bytes(packet, linktype)
        ts = _ts_of(packet, index)
        seconds = int(ts)
        fraction = int((ts - seconds) * scale)
        out += struct.pack(endian + "IIII", seconds, fraction, len(data), len(data)) + data
    Path(path).write_bytes(out)
    return Path(path)


def write_pcapng(path: str | Path, packets: Iterable[PacketLike | tuple[int, PacketLike]],
                 linktype: int = LINKTYPE_ETHERNET, *, ts_digits: int = 6, big_endian: bool = False) -> Path:
    """Write a pcapng file: one section, an interface per link type, Enhanced Packet Blocks.

    An item may be `(linktype, packet)` to put that packet on an interface of its own link type
    (as dumpcap does when capturing on several interfaces). `ts_digits` is the interface's decimal
    timestamp resolution (6: microseconds, 9: nanoseconds) written as its `if_tsresol` option.
    """
    endian = ">" if big_endian else "<"

    def block(block_type: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        length = len(body) + 12
        return struct.pack(endian + "II", block_type, length) + body + struct.pack(endian + "I", length)

    out = bytearray(block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
    interfaces: dict[int, int] = {}
    for index, item in enumerate(packets):
        item_linktype, packet = item if isinstance(item, tuple) else (linktype, item)
        if item_linktype not in interfaces:
            interfaces[item_linktype] = len(interfaces)
            options = struct.pack(endian + "HHB3x", 9, 1, ts_digits) + struct.pack(endian + "HH", 0, 0)
            out += block(1, struct.pack(endian + "HHI", item_linktype, 0, 262144) + options)
        data = frame_bytes(packet, item_linktype)
        units = int(_ts_of(packet, index) * 10**ts_digits)
        out += block(6, struct.pack(endian + "IIIII", interfaces[item_linktype], units >> 32, units & 0xFFFFFFFF,
                                    len(data), len(data)) + data)
    Path(path).write_bytes(out)
    return Path(path)


# ---- hostile input --------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostileCase:
    """One hostile frame, what it is, and the reject reason `decode_frame` gives it (None: it decodes
    to a TCP segment and the hostility is in the HTTP bytes)."""

    name: str
    frame: bytes
    link_reason: str | None


def hostile_cases() -> list[HostileCase]:
    """Malformed frames and nasty requests, each an Ethernet frame, with expected link-layer reasons."""
    get = http_get_packets("10.0.0.1", "10.0.0.2", "example.com", "/f.iso", handshake=False)[0]
    raw_get = bytes(get)
    bad_ihl = bytearray(raw_get)
    bad_ihl[14] = 0x43  # version 4, header length 12 bytes
    short_total = bytearray(raw_get)
    short_total[16:18] = (10).to_bytes(2, "big")  # total length shorter than the IP header
    bad_tcp_offset = bytearray(raw_get)
    bad_tcp_offset[14 + 20 + 12] = 0x20  # TCP data offset 8 bytes

    ports = iter(range(50000, 60000))  # a connection of its own for every case

    def one(target: str, **kwargs) -> bytes:
        return bytes(http_get_packets("10.0.0.1", "10.0.0.2", kwargs.pop("host", "example.com"), target,
                                      handshake=False, client_port=next(ports), **kwargs)[0])

    def segment(data: bytes, port: int = 80) -> bytes:
        return bytes(_frame("10.0.0.1", "10.0.0.2", next(ports), port, "PA", 1, 1, data, None, CLIENT_MAC,
                            SERVER_MAC))

    tls_hello = bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00\x02\x13\x01\x01\x00"
    long_target = "/" + "a" * 60_000 + ".iso"
    split_long = http_get_packets("10.0.0.1", "10.0.0.2", "example.com", long_target, handshake=False,
                                  client_port=next(ports))
    cases = [
        HostileCase("empty_frame", b"", "truncated_ethernet"),
        HostileCase("ethernet_header_cut", raw_get[:10], "truncated_ethernet"),
        HostileCase("vlan_tag_cut", bytes(with_vlan(_ether(), 7))[:16],
                    "truncated_vlan"),
        HostileCase("ipv4_header_cut", raw_get[:14 + 12], "truncated_ipv4"),
        HostileCase("ipv4_body_cut", raw_get[:-5], "truncated_ipv4"),
        HostileCase("tcp_header_cut", bytes(_ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=6, len=30)
                                            / Raw(b"\0" * 10)), "truncated_tcp"),
        HostileCase("bad_ihl", bytes(bad_ihl), "bad_ipv4_header_length"),
        HostileCase("ip_total_length_too_small", bytes(short_total), "bad_ip_length"),
        HostileCase("bad_tcp_offset", bytes(bad_tcp_offset), "bad_tcp_offset"),
        HostileCase("ipv6_header_cut", bytes(_ether() / IPv6(src="fd00::1", dst="fd00::2"))[:30], "truncated_ipv6"),
        HostileCase("arp", bytes(_ether(type=0x0806) / Raw(b"\x00" * 28)), "not_ip"),
        HostileCase("ip_fragment", bytes(_ether() / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", proto=6)
                                         / Raw(b"GET / HTTP/1.1\r\n")), "ip_fragment"),
        HostileCase("udp", bytes(_ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=17) / Raw(b"\0" * 8)), "not_tcp"),
        HostileCase("garbage_payload", segment(bytes(range(256)) * 4), None),
        HostileCase("tls_on_port_80", segment(tls_hello), None),
        HostileCase("nul_in_target", one("/a\x00b.iso"), None),
        HostileCase("nul_in_header", one("/f.iso", headers={"X-Evil": "a\x00b"}), None),
        HostileCase("quotes_in_target", one("/a'\";--.iso"), None),
        HostileCase("traversal_target", one("/../../../etc/passwd.iso"), None),
        HostileCase("encoded_traversal_target", one("/%2e%2e/%2e%2e/etc/shadow.iso"), None),
        HostileCase("absolute_traversal_target", one("http://example.com/a/../../../../x.iso"), None),
        HostileCase("quotes_in_host", one("/f.iso", host="ex'ample\".com"), None),
        HostileCase("binary_request_line", segment(b"GET /\xff\xfe\x00 HTTP/1.1\r\nHost: x\r\n\r\n"), None),
    ]
    cases += [HostileCase(f"long_target_part_{i}", bytes(p), None) for i, p in enumerate(split_long)]
    return cases


def hostile_packets() -> list[bytes]:
    """The frames of `hostile_cases()` in order: Ethernet frames for `write_capture(path, ..., 1)`."""
    return [case.frame for case in hostile_cases()]
