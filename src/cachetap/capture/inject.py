"""The redirect fast path: answer a captured GET with a spoofed 302 and reset the origin side.

From the client->origin GET segment we build, by hand, two Ethernet frames and send them through one
raw AF_PACKET socket per interface that stays open for the life of the process:

1. origin->client: "HTTP/1.1 302 Found" + Location, flags PSH|ACK|FIN, seq = the GET's ack,
   ack = GET seq + len(GET payload). The client takes it as the server's answer and closes.
2. client->origin: RST|ACK with seq = GET seq + len(GET payload), so the origin stops sending.

Hot path, hand-written on purpose: `scapy.send()` opens a socket and resolves a route per call
(23-42 ms per packet on these machines: bench/redirect_latency.py, mode scapy) and scapy's packet
building alone costs ~1.5 ms; `struct` templates and the checksum arithmetic below cost a few microseconds.

Link layer: by default the frames reuse the captured frame's MAC addresses, swapped for the
client-bound frame, and its VLAN tags (injection on the capture interface or a port of the same L2
segment). When a direction leaves through another interface, its destination MAC must be given
explicitly; the source MAC is then that interface's own and no captured tags are copied (use a VLAN
sub-interface such as eth0.10 to tag).
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetap.core.types import Segment

if TYPE_CHECKING:
    from cachetap.settings import Settings

# The 302 must fit one segment on any path: the IPv6 minimum MTU (1280) minus IPv6 and TCP headers.
MAX_PAYLOAD = 1280 - 40 - 20
ETHERTYPE_IPV4 = b"\x08\x00"
ETHERTYPE_IPV6 = b"\x86\xdd"
VLAN_TPIDS = frozenset({b"\x81\x00", b"\x88\xa8", b"\x91\x00"})

TCP_FIN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x04, 0x08, 0x10
REDIRECT_FLAGS = TCP_PSH | TCP_ACK | TCP_FIN
RESET_FLAGS = TCP_RST | TCP_ACK
TTL = 64
WINDOW = 65535

_RESPONSE_HEAD = b"HTTP/1.1 302 Found\r\nLocation: "
_RESPONSE_TAIL = b"\r\nContent-Length: 0\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
MAX_LOCATION = MAX_PAYLOAD - len(_RESPONSE_HEAD) - len(_RESPONSE_TAIL)

_IPV4 = struct.Struct("!BBHHHBBH4s4s")        # version/IHL .. destination, checksum in place
_IPV6 = struct.Struct("!IHBB16s16s")          # version/class/flow, payload length, next header, hops
_TCP = struct.Struct("!HHIIBBHHH")             # ports, seq, ack, offset, flags, window, checksum, urg
_PSEUDO4 = struct.Struct("!4s4sBBH")
_PSEUDO6 = struct.Struct("!16s16sIxxxB")
_U16 = struct.Struct("!H")
_MASK32 = 0xFFFFFFFF


class InjectError(ValueError):
    """A redirect that cannot be built; `reason` is a short machine reason for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LinkHeaders:
    """Ethernet headers without the ethertype (destination MAC, source MAC, VLAN tags) per direction."""

    to_client: bytes
    to_origin: bytes

    @classmethod
    def swapped(cls, frame: bytes) -> LinkHeaders:
        """From a captured client->origin Ethernet frame: reply with swapped MACs, keep its VLAN tags."""
        if len(frame) < 14:
            raise InjectError("bad_frame", "shorter than an Ethernet header")
        end = 12
        while frame[end:end + 2] in VLAN_TPIDS:
            end += 4
            if len(frame) < end + 2:
                raise InjectError("bad_frame", "truncated VLAN tag")
        client_mac, origin_mac, tags = frame[6:12], frame[0:6], frame[12:end]
        return cls(to_client=client_mac + origin_mac + tags, to_origin=origin_mac + client_mac + tags)


def redirect_payload(location: str) -> bytes:
    """The 302 response for `location`; raises InjectError for a location that could smuggle headers."""
    if not isinstance(location, str) or not location:
        raise InjectError("bad_location", "empty")
    if len(location) > MAX_LOCATION:
        raise InjectError("bad_location", f"longer than {MAX_LOCATION} characters (302 must fit one segment)")
    # Visible ASCII only: CR, LF and NUL would end or split the header; spaces and non-ASCII are not
    # valid in a URI either (percent-encode them).
    if not location.isascii() or not location.isprintable() or " " in location:
        raise InjectError("bad_location", "control, space or non-ASCII character")
    return _RESPONSE_HEAD + location.encode("ascii") + _RESPONSE_TAIL


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum. Hot path: one big-integer remainder instead of a loop over 16-bit words.

    Since 2**16 = 1 (mod 0xFFFF), the big-endian integer of the data is congruent to the sum of its
    16-bit words, and the ones' complement sum is that residue (0xFFFF standing for a non-zero 0).
    """
    if len(data) & 1:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    if total == 0 and value:
        total = 0xFFFF
    return ~total & 0xFFFF


_ip_ids = itertools.count(1)


def _ipv4_packet(src: bytes, dst: bytes, tcp: bytes) -> bytes:
    header = _IPV4.pack(0x45, 0, 20 + len(tcp), next(_ip_ids) & 0xFFFF, 0x4000, TTL, 6, 0, src, dst)
    checksum = internet_checksum(header)
    return header[:10] + _U16.pack(checksum) + header[12:] + tcp


def _tcp_segment(pseudo: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    header = _TCP.pack(sport, dport, seq & _MASK32, ack & _MASK32, 5 << 4, flags, WINDOW, 0, 0)
    checksum = internet_checksum(pseudo + header + payload)
    return header[:16] + _U16.pack(checksum) + header[18:] + payload


def build_redirect_frames(seg: Segment, link: LinkHeaders, location: str | bytes) -> list[bytes]:
    """[302 frame to the client, RST frame to the origin] for the captured GET `seg`.

    `location` is the URL (validated here) or a payload already made by `redirect_payload`.
    Raises InjectError (reason `bad_location`, `bad_address` or `no_payload`).
    """
    payload = location if isinstance(location, bytes) else redirect_payload(location)
    if not seg.payload:
        raise InjectError("no_payload", "the captured segment carries no request")
    next_seq = seg.seq + len(seg.payload)
    try:
        if ":" in seg.src:
            client, origin = socket.inet_pton(socket.AF_INET6, seg.src), socket.inet_pton(socket.AF_INET6, seg.dst)
            ethertype = ETHERTYPE_IPV6
        else:
            client, origin = socket.inet_pton(socket.AF_INET, seg.src), socket.inet_pton(socket.AF_INET, seg.dst)
            ethertype = ETHERTYPE_IPV4
    except OSError:
        raise InjectError("bad_address", f"{seg.src!r} -> {seg.dst!r}") from None

    packets = []
    for src, dst, sport, dport, seq, ack, flags, data in (
        (origin, client, seg.dport, seg.sport, seg.ack, next_seq, REDIRECT_FLAGS, payload),
        (client, origin, seg.sport, seg.dport, next_seq, seg.ack, RESET_FLAGS, b""),
    ):
        tcp_len = 20 + len(data)
        if ethertype is ETHERTYPE_IPV4:
            tcp = _tcp_segment(_PSEUDO4.pack(src, dst, 0, 6, tcp_len), sport, dport, seq, ack, flags, data)
            packets.append(_ipv4_packet(src, dst, tcp))
        else:
            tcp = _tcp_segment(_PSEUDO6.pack(src, dst, tcp_len, 6), sport, dport, seq, ack, flags, data)
            packets.append(_IPV6.pack(0x60000000, tcp_len, 6, TTL, src, dst) + tcp)
    return [link.to_client + ethertype + packets[0], link.to_origin + ethertype + packets[1]]


def parse_mac(text: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' (or with '-') -> 6 bytes; raises ValueError naming the bad value."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


class Injector:
    """Sends redirects through raw AF_PACKET sockets opened once (needs CAP_NET_RAW).

    `interface` carries the client-bound 302. `origin_interface` (default: the same) carries the
    RST. A direction whose destination MAC is given (`client_mac`, `origin_mac`) uses the egress
    interface's own MAC as source; otherwise the captured frame's MACs are reused (swapped for the
    client). `own_source_mac=True` uses the interface's own MAC as source even then, which spares a
    switch from learning the spoofed MAC on the injection port.
    """

    def __init__(self, interface: str, *, origin_interface: str | None = None, client_mac: str | None = None,
                 origin_mac: str | None = None, own_source_mac: bool = False) -> None:
        self._client_dst = parse_mac(client_mac) if client_mac else None
        self._origin_dst = parse_mac(origin_mac) if origin_mac else None
        self._own_source_mac = own_source_mac
        self._sockets: dict[str, socket.socket] = {}
        try:
            self._to_client = self._open(interface)
            self._to_origin = self._open(origin_interface or interface)
        except BaseException:
            self.close()
            raise
        self._client_src = self._to_client.getsockname()[4]
        self._origin_src = self._to_origin.getsockname()[4]
        self._payloads: dict[str, bytes] = {}
        self.sent = 0                       # redirects whose 302 left the socket
        self.failures: Counter[str] = Counter()
        self.last_sent_at = 0.0             # time.time() right after the last 302 left the socket

    @classmethod
    def from_settings(cls, settings: Settings) -> Injector:
        interface = settings.inject_interface or settings.interface
        if not interface:
            raise ValueError("redirect needs an interface: set inject_interface or interface")
        return cls(interface, origin_interface=settings.redirect_origin_interface,
                   client_mac=settings.redirect_client_mac, origin_mac=settings.redirect_origin_mac,
                   own_source_mac=settings.redirect_own_source_mac)

    def _open(self, interface: str) -> socket.socket:
        if interface not in self._sockets:
            # Protocol 0: a send-only socket; the kernel queues nothing for it to read.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                sock.bind((interface, 0))
            except OSError:
                sock.close()
                raise
            self._sockets[interface] = sock
        return self._sockets[interface]

    def link_headers(self, frame: bytes) -> LinkHeaders:
        """The link headers for a redirect answering the captured Ethernet `frame`."""
        captured = LinkHeaders.swapped(frame)
        to_client, to_origin = captured.to_client, captured.to_origin
        if self._client_dst is not None:
            to_client = self._client_dst + self._client_src
        elif self._own_source_mac:
            to_client = to_client[:6] + self._client_src + to_client[12:]
        if self._origin_dst is not None:
            to_origin = self._origin_dst + self._origin_src
        elif self._own_source_mac:
            to_origin = to_origin[:6] + self._origin_src + to_origin[12:]
        return LinkHeaders(to_client, to_origin)

    def redirect(self, seg: Segment, frame: bytes, location: str) -> int:
        """Answer the GET in `seg` (captured as Ethernet `frame`) with a 302 to `location`.

        Returns the number of frames sent (2 on success). Never raises for bad input or a failed
        send: the reason is counted in `failures` and fewer frames are reported.
        """
        try:
            payload = self._payloads.get(location)
            if payload is None:
                payload = redirect_payload(location)
                if len(self._payloads) >= 4096:  # locations embed keys: bound the memo
                    self._payloads.clear()
                self._payloads[location] = payload
            to_client, to_origin = build_redirect_frames(seg, self.link_headers(frame), payload)
        except InjectError as exc:
            self.failures[exc.reason] += 1
            return 0
        try:
            self._to_client.send(to_client)
            self.last_sent_at = time.time()
        except OSError as exc:
            self.failures[f"send_{_errno_name(exc)}"] += 1
            return 0
        self.sent += 1
        try:
            self._to_origin.send(to_origin)
        except OSError as exc:
            self.failures[f"reset_{_errno_name(exc)}"] += 1
            return 1
        return 2

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "oserror").lower()
