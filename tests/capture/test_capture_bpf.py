"""request_filter: it compiles (tcpdump -d) and, run by libpcap on a real capture, keeps exactly the
request starts (GET/HEAD, IPv4/IPv6, plain/VLAN/QinQ) to the given ports."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cachetap.capture.bpf import request_filter
from cachetap.capture.linklayer import decode_frame
from cachetap.capture.pcapfile import read_frames
from cachetap.testing.pcaps import http_get_packets, write_capture

pytestmark = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
LINKTYPE_NAMES = {1: "EN10MB", 113: "LINUX_SLL", 276: "LINUX_SLL2", 101: "RAW", 0: "NULL"}


def compiles(expression: str, linktype: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(["tcpdump", "-d", "-y", LINKTYPE_NAMES[linktype], expression],
                          capture_output=True, text=True)


def run_filter(tmp_path, packets, expression: str, linktype: int = 1) -> list[bytes]:
    source = write_capture(tmp_path / "in.pcap", packets, linktype)
    out = tmp_path / "out.pcap"
    subprocess.run(["tcpdump", "-r", str(source), "-w", str(out), expression], check=True, capture_output=True)
    return [decode_frame(lt, frame, ts).payload for ts, lt, frame in read_frames(out)]


def conversation_mix(ports_in: list[int], port_out: int) -> tuple[list, list[bytes]]:
    """Packets of many kinds, and the request-start payloads that must survive the filter."""
    packets, wanted = [], []
    client_port = 41000

    def add(keep: bool, *args, **kwargs):
        nonlocal client_port
        client_port += 1
        conv = http_get_packets(*args, client_port=client_port, **kwargs)
        packets.extend(conv)
        if keep:
            first_data = next(p for p in conv if p.haslayer("Raw") and p["TCP"].sport == client_port)
            wanted.append(bytes(first_data["Raw"].load))

    for port in ports_in:
        add(True, "10.0.0.1", "10.0.0.2", "example.com", f"/v4-{port}.iso", server_port=port, response_bytes=4000)
        add(True, "fd00::1", "fd00::2", "example.com", f"/v6-{port}.iso", server_port=port, response_bytes=4000)
        add(True, "10.0.0.1", "10.0.0.2", "example.com", f"/vlan-{port}.iso", server_port=port, vlan=12,
            response_bytes=3000)
        add(True, "fd00::1", "fd00::2", "example.com", f"/vlan6-{port}.iso", server_port=port, vlan=12)
        add(True, "10.0.0.1", "10.0.0.2", "example.com", f"/qinq-{port}.iso", server_port=port, vlan=(100, 12))
        add(True, "fd00::1", "fd00::2", "example.com", f"/qinq6-{port}.iso", server_port=port, vlan=(100, 12))
        add(True, "10.0.0.1", "10.0.0.2", "example.com", f"/head-{port}.iso", method="HEAD", server_port=port)
        add(True, "fd00::1", "fd00::2", "example.com", f"/head6-{port}.iso", method="HEAD", server_port=port, vlan=3)
        # A split head: only its first segment starts with "GET ".
        add(True, "10.0.0.1", "10.0.0.2", "example.com", f"/split-{port}.iso", server_port=port, split_at=[9, 20])
        # Not request starts: other methods (even with "GET " in the body), a method lookalike.
        add(False, "10.0.0.1", "10.0.0.2", "example.com", "/upload", method="POST", body=b"GET x",
            server_port=port)
        add(False, "fd00::1", "fd00::2", "example.com", "/upload", method="PUT", server_port=port, vlan=12)
        add(False, "10.0.0.1", "10.0.0.2", "example.com", "/x", method="GETX", server_port=port)
        add(False, "10.0.0.1", "10.0.0.2", "example.com", "/x", method="HEADER", server_port=port)
    # A GET to a port not in the list.
    add(False, "10.0.0.1", "10.0.0.2", "example.com", "/elsewhere.iso", server_port=port_out)
    add(False, "fd00::1", "fd00::2", "example.com", "/elsewhere6.iso", server_port=port_out, vlan=4)
    return packets, wanted


def test_compiles_for_one_and_many_ports():
    for ports in ([80], [80, 8080], [80, 8080, 3128, 8000, 65535]):
        result = compiles(request_filter(ports))
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("linktype", [113, 276, 101, 0])
def test_compiles_for_non_ethernet_link_types(linktype):
    expression = request_filter([80], linktype)
    assert "vlan" not in expression
    result = compiles(expression, linktype)
    assert result.returncode == 0, result.stderr
    # The VLAN form would not compile there: that is why it is left out.
    assert compiles(request_filter([80]), linktype).returncode != 0


def test_exactly_the_request_starts_survive(tmp_path):
    packets, wanted = conversation_mix([80, 8080], 81)
    survivors = run_filter(tmp_path, packets, request_filter([80, 8080]))
    assert survivors == wanted
    assert len(packets) > 5 * len(wanted)  # handshakes, responses, ACKs and other methods were dropped


def test_single_port_filter_drops_the_other_port(tmp_path):
    packets_80, _ = conversation_mix([80], 81)
    packets_8080, wanted_8080 = conversation_mix([8080], 81)
    survivors = run_filter(tmp_path, packets_80 + packets_8080, request_filter([8080]))
    assert survivors == wanted_8080


@pytest.mark.parametrize("linktype", [113, 276, 101])
def test_filter_on_cooked_and_raw_captures(tmp_path, linktype):
    packets, wanted = [], []
    for index, (client, server) in enumerate([("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")]):
        conv = http_get_packets(client, server, "h", f"/{index}.iso", client_port=42000 + index, response_bytes=2000)
        packets += conv
        wanted.append(bytes(conv[3]["Raw"].load))
        packets += http_get_packets(client, server, "h", "/p", method="POST", body=b"1", client_port=42100 + index)
    assert run_filter(tmp_path, packets, request_filter([80], linktype), linktype) == wanted


@pytest.mark.parametrize("ports", [[], [0], [65536], [-1], ["80"], [True], [80.0]])
def test_bad_ports_are_refused(ports):
    with pytest.raises(ValueError):
        request_filter(ports)
