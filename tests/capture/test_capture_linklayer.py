"""decode_frame on frames built by scapy: every link type, VLAN stacks, IPv6 extension headers, bad input."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from cachetap.capture.linklayer import decode_frame
from cachetap.core.types import Segment
from cachetap.testing.pcaps import frame_bytes, hostile_cases, http_get_packets

GET = b"GET /file.iso HTTP/1.1\r\nHost: example.com\r\n\r\n"
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def tcp(data: bytes = GET, **fields) -> TCP:
    values = {"sport": 40000, "dport": 80, "seq": 123456789, "ack": 987654321, "flags": "PA"} | fields
    return TCP(**values) / Raw(data)


def decode(linktype: int, packet, ts: float = 1.5):
    return decode_frame(linktype, frame_bytes(packet, linktype) if not isinstance(packet, bytes) else packet, ts)


@pytest.mark.parametrize("linktype", [0, 1, 101, 113, 276])
@pytest.mark.parametrize("src,dst", [("192.0.2.10", "198.51.100.7"), ("2001:db8::10", "2001:db8:0:1::7")])
def test_every_link_type_decodes_ipv4_and_ipv6(linktype, src, dst):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    seg = decode(linktype, Ether(**MACS) / ip / tcp(), ts=12.25)
    assert seg == Segment(ts=12.25, src=src, dst=dst, sport=40000, dport=80, seq=123456789, ack=987654321,
                          flags=0x18, payload=GET, vlan=None)


@pytest.mark.parametrize("linktype", [12, 14])
def test_bsd_raw_ip_link_types(linktype):
    seg = decode_frame(linktype, bytes(IP(src="10.1.1.1", dst="10.2.2.2") / tcp()), 0.0)
    assert isinstance(seg, Segment) and seg.payload == GET


def test_bsd_loopback_family_in_either_byte_order_and_openbsd_loop():
    packet = bytes(IPv6(src="::1", dst="::1") / tcp())
    for header in (struct.pack("<I", 30), struct.pack(">I", 28), struct.pack("<I", 24), struct.pack(">I", 10)):
        assert decode_frame(0, header + packet, 0.0).src == "::1"
    packet4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / tcp())
    assert decode_frame(0, struct.pack(">I", 2) + packet4, 0.0).dst == "10.0.0.2"
    assert decode_frame(108, struct.pack(">I", 24) + packet, 0.0).dport == 80
    assert decode_frame(0, struct.pack("<I", 7) + packet, 0.0) == "not_ip"


def test_vlan_tag_keeps_its_id():
    frame = Ether(**MACS) / Dot1Q(vlan=42, prio=5) / IP(src="10.0.0.1", dst="10.0.0.2") / tcp()
    seg = decode(1, frame)
    assert seg.vlan == 42 and seg.payload == GET


@pytest.mark.parametrize("linktype", [1, 113, 276])
def test_qinq_keeps_the_outer_vlan_id(linktype):
    frame = Ether(**MACS) / Dot1AD(vlan=300) / Dot1Q(vlan=42) / IPv6(src="fd00::1", dst="fd00::2") / tcp()
    seg = decode(linktype, frame)
    assert seg.vlan == 300 and seg.src == "fd00::1" and seg.payload == GET


def test_three_stacked_tags_including_legacy_9100():
    frame = bytes(Ether(**MACS, type=0x9100) / Dot1AD(vlan=7) / Dot1Q(vlan=8)
                  / IP(src="10.0.0.1", dst="10.0.0.2") / tcp())
    seg = decode_frame(1, frame, 0.0)
    assert isinstance(seg, Segment) and seg.payload == GET and seg.vlan == 7


def test_generated_vlan_conversation_decodes_with_vlan():
    packets = http_get_packets("10.0.0.1", "10.0.0.2", "h", "/a.iso", vlan=(10, 20))
    segs = [decode(1, p) for p in packets]
    assert all(isinstance(s, Segment) and s.vlan == 10 for s in segs)


def test_ipv6_extension_headers_are_walked():
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
    chain = ip6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=["2001:db8::3"]) \
        / IPv6ExtHdrDestOpt() / tcp()
    seg = decode(1, Ether(**MACS) / chain)
    assert isinstance(seg, Segment) and seg.payload == GET and seg.dport == 80


def test_ipv6_fragment_header_is_rejected():
    assert decode(1, Ether(**MACS) / IPv6(src="::1", dst="::2") / IPv6ExtHdrFragment() / tcp()) == "ip_fragment"
    assert decode(1, Ether(**MACS) / IPv6(src="::1", dst="::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment()
                  / tcp()) == "ip_fragment"


def test_ipv6_extension_header_running_past_the_packet():
    frame = bytearray(bytes(Ether(**MACS) / IPv6(src="::1", dst="::2") / IPv6ExtHdrHopByHop() / tcp()))
    frame[14 + 40 + 1] = 200  # hop-by-hop header length far beyond the packet
    assert decode_frame(1, bytes(frame), 0.0) == "truncated_ipv6"


def test_ipv4_fragments_are_rejected():
    first = IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / tcp()
    later = IP(src="10.0.0.1", dst="10.0.0.2", frag=100, proto=6) / Raw(b"tail of a request")
    dont_fragment = IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / tcp()
    assert decode(1, Ether(**MACS) / first) == "ip_fragment"
    assert decode(1, Ether(**MACS) / later) == "ip_fragment"
    assert isinstance(decode(1, Ether(**MACS) / dont_fragment), Segment)


def test_ethernet_padding_is_trimmed_by_ip_length():
    frame = bytes(Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A")) + b"\x00" * 6
    seg = decode_frame(1, frame, 0.0)
    assert seg.payload == b""
    frame6 = bytes(Ether(**MACS) / IPv6(src="::1", dst="::2") / tcp(b"GET")) + b"\xee" * 10
    assert decode_frame(1, frame6, 0.0).payload == b"GET"


def test_tso_zero_ip_length_uses_the_captured_bytes():
    frame = bytearray(bytes(Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / tcp()))
    frame[16:18] = b"\x00\x00"
    assert decode_frame(1, bytes(frame), 0.0).payload == GET


def test_tcp_options_are_skipped():
    packet = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=8080, options=[("MSS", 1460), ("NOP", None),
                                                                             ("WScale", 7), ("SAckOK", b"")]) / Raw(GET)
    seg = decode(101, packet)
    assert seg.payload == GET and seg.dport == 8080


def test_not_tcp_and_not_ip():
    assert decode(1, Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(GET)) == "not_tcp"
    assert decode(1, Ether(**MACS) / IPv6(src="::1", dst="::2") / UDP() / Raw(GET)) == "not_tcp"
    assert decode(1, Ether(**MACS, type=0x0806) / Raw(b"\0" * 28)) == "not_ip"
    assert decode(1, Ether(**MACS, type=0x88CC) / Raw(b"\0" * 40)) == "not_ip"  # LLDP
    assert decode_frame(113, bytes(16), 0.0) == "not_ip"


@pytest.mark.parametrize("linktype", [2, 105, 127, 65535, -1])
def test_unknown_link_type(linktype):
    assert decode_frame(linktype, bytes(Ether(**MACS) / IP() / tcp()), 0.0) == f"linktype_{linktype}"


def test_raw_ip_with_bad_version():
    assert decode_frame(101, b"\x50" + bytes(39), 0.0) == "bad_ip_version"
    assert decode_frame(101, b"", 0.0) == "truncated_ip"
    # Ethertype says IPv4 but the header says 6.
    frame = bytes(Ether(**MACS, type=0x0800) / IPv6(src="::1", dst="::2") / tcp())
    assert decode_frame(1, frame, 0.0) == "bad_ip_version"


@pytest.mark.parametrize("linktype,short,reason", [
    (1, 13, "truncated_ethernet"), (113, 15, "truncated_sll"), (276, 19, "truncated_sll2"),
    (0, 3, "truncated_loopback"),
])
def test_truncated_link_headers(linktype, short, reason):
    frame = frame_bytes(Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / tcp(), linktype)
    assert decode_frame(linktype, frame[:short], 0.0) == reason


def test_every_prefix_of_a_frame_gives_a_reason_never_an_exception():
    for packet in (Ether(**MACS) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IP(src="10.0.0.1", dst="10.0.0.2") / tcp(),
                   Ether(**MACS) / IPv6(src="::1", dst="::2") / IPv6ExtHdrHopByHop() / tcp()):
        frame = bytes(packet)
        for cut in range(len(frame) - len(GET)):
            result = decode_frame(1, frame[:cut], 0.0)
            assert isinstance(result, str) and result.startswith(("truncated_", "bad_ip_length")), (cut, result)


@pytest.mark.parametrize("case", hostile_cases(), ids=lambda c: c.name)
def test_hostile_frames_get_their_exact_reason(case):
    result = decode_frame(1, case.frame, 0.0)
    if case.link_reason is None:
        assert isinstance(result, Segment)
    else:
        assert result == case.link_reason


@settings(max_examples=300, deadline=None)
@given(linktype=st.sampled_from([0, 1, 12, 14, 101, 108, 113, 276]), frame=st.binary(max_size=200))
def test_random_bytes_never_raise(linktype, frame):
    result = decode_frame(linktype, frame, 0.0)
    assert isinstance(result, (str, Segment))


@settings(max_examples=100, deadline=None)
@given(src=st.ip_addresses(v=6), dst=st.ip_addresses(v=4), data=st.binary(max_size=100))
def test_addresses_match_ipaddress_formatting(src, dst, data):
    seg6 = decode(101, IPv6(src=str(src), dst=str(src)) / tcp(data))
    assert ipaddress.ip_address(seg6.src) == src and seg6.payload == data
    seg4 = decode(101, IP(src=str(dst), dst=str(dst)) / tcp(data))
    assert seg4.src == str(dst)
