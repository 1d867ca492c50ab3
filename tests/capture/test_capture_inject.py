"""The 302 injector: frame building checked by scapy's dissection, and real redirects in namespaces."""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import IP, TCP, Dot1Q, Ether, IPv6, raw
from scapy.utils import checksum as scapy_checksum

from cachetap.capture.inject import (MAX_LOCATION, REDIRECT_FLAGS, RESET_FLAGS, InjectError, Injector, LinkHeaders,
                                     build_redirect_frames, internet_checksum, parse_mac, redirect_payload)
from cachetap.capture.linklayer import decode_frame
from cachetap.core.types import Segment
from cachetap.testing.netns import Topology, netns_problem

CLIENT_MAC, ORIGIN_MAC = "02:00:00:00:00:0c", "02:00:00:00:00:0a"
GET = b"GET /big.iso HTTP/1.1\r\nHost: example.test\r\n\r\n"
LOCATION = "http://10.9.9.9:8080/c/0123456789abcdef0123456789abcdef/big.iso"


def _captured(src: str, dst: str, seq: int = 1_000, ack: int = 77_000, tags: tuple[int, ...] = ()) -> tuple[Segment, bytes]:
    """A client->origin GET frame as captured, and the Segment the link layer decodes from it."""
    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    frame = Ether(src=CLIENT_MAC, dst=ORIGIN_MAC)
    for vlan in tags:
        frame = frame / Dot1Q(vlan=vlan)
    frame = raw(frame / l3 / TCP(sport=40_001, dport=80, seq=seq, ack=ack, flags="PA") / GET)
    seg = decode_frame(1, frame, 1.0)
    assert isinstance(seg, Segment)
    return seg, frame


def _valid_checksums(frame: bytes) -> bool:
    pkt = Ether(frame)
    tcp = pkt[TCP]
    got_tcp = tcp.chksum
    del tcp.chksum
    if IP in pkt:
        got_ip = pkt[IP].chksum
        del pkt[IP].chksum
        rebuilt = Ether(raw(pkt))
        return got_tcp == rebuilt[TCP].chksum and got_ip == rebuilt[IP].chksum
    return got_tcp == Ether(raw(pkt))[TCP].chksum


# ---- build_redirect_frames ---------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [("192.168.1.20", "203.0.113.5"), ("fd00:1::20", "2001:db8::5")])
def test_frames_are_valid_302_and_reset(src, dst):
    seg, frame = _captured(src, dst)
    to_client, to_origin = build_redirect_frames(seg, LinkHeaders.swapped(frame), LOCATION)
    reply, reset = Ether(to_client), Ether(to_origin)
    l3 = IPv6 if ":" in src else IP

    assert (reply.src, reply.dst) == (ORIGIN_MAC, CLIENT_MAC)
    assert (reply[l3].src, reply[l3].dst, reply[TCP].sport, reply[TCP].dport) == (dst, src, 80, 40_001)
    assert reply[TCP].seq == 77_000 and reply[TCP].ack == 1_000 + len(GET)
    assert int(reply[TCP].flags) == REDIRECT_FLAGS
    assert bytes(reply[TCP].payload) == (
        b"HTTP/1.1 302 Found\r\nLocation: " + LOCATION.encode() +
        b"\r\nContent-Length: 0\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n")

    assert (reset.src, reset.dst) == (CLIENT_MAC, ORIGIN_MAC)
    assert (reset[l3].src, reset[l3].dst, reset[TCP].sport, reset[TCP].dport) == (src, dst, 40_001, 80)
    assert reset[TCP].seq == 1_000 + len(GET) and reset[TCP].ack == 77_000
    assert int(reset[TCP].flags) == RESET_FLAGS and not bytes(reset[TCP].payload)

    for f in (to_client, to_origin):
        assert _valid_checksums(f)
        if l3 is IP:
            assert Ether(f)[IP].len == len(f) - 14 and Ether(f)[IP].flags == "DF"
        else:
            assert Ether(f)[IPv6].plen == len(f) - 14 - 40


def test_vlan_tags_are_kept_and_sequence_numbers_wrap():
    seg, frame = _captured("10.1.1.2", "10.2.2.2", seq=2**32 - 5, ack=2**32 - 1, tags=(10, 20))
    assert seg.vlan == 10
    to_client, to_origin = build_redirect_frames(seg, LinkHeaders.swapped(frame), LOCATION)
    for f in (to_client, to_origin):
        pkt = Ether(f)
        assert [layer.vlan for layer in (pkt[Dot1Q], pkt[Dot1Q].payload)] == [10, 20]
        assert _valid_checksums(f)
    assert Ether(to_client)[TCP].ack == (2**32 - 5 + len(GET)) % 2**32
    assert Ether(to_origin)[TCP].seq == (2**32 - 5 + len(GET)) % 2**32


@pytest.mark.parametrize("location", [
    "", "http://a/\r\nSet-Cookie: x=1", "http://a/\nX: y", "http://a/\rX", "http://a/\x00", "http://a/ b",
    "http://a/\x7f", "http://a/\u00e9", "http://a/\t", "/" * (MAX_LOCATION + 1),
])
def test_bad_locations_are_refused(location):
    seg, frame = _captured("10.1.1.2", "10.2.2.2")
    with pytest.raises(InjectError) as caught:
        build_redirect_frames(seg, LinkHeaders.swapped(frame), location)
    assert caught.value.reason == "bad_location"


def test_longest_location_fits_one_minimum_mtu_segment():
    seg, frame = _captured("fd00::1", "fd00::2")
    to_client, _ = build_redirect_frames(seg, LinkHeaders.swapped(frame), "/" + "a" * (MAX_LOCATION - 1))
    assert len(to_client) - 14 <= 1280
    assert _valid_checksums(to_client)


def test_bad_segments_and_frames_are_refused():
    seg, frame = _captured("10.1.1.2", "10.2.2.2")
    link = LinkHeaders.swapped(frame)
    empty = Segment(**{**{f: getattr(seg, f) for f in seg.__slots__}, "payload": b""})
    with pytest.raises(InjectError, match="no_payload"):
        build_redirect_frames(empty, link, LOCATION)
    bad = Segment(**{**{f: getattr(seg, f) for f in seg.__slots__}, "src": "not-an-ip"})
    with pytest.raises(InjectError, match="bad_address"):
        build_redirect_frames(bad, link, LOCATION)
    for short in (b"", frame[:13], frame[:12] + b"\x81\x00\x00"):
        with pytest.raises(InjectError, match="bad_frame"):
            LinkHeaders.swapped(short)


@given(st.binary(max_size=1500))
def test_checksum_matches_scapy(data):
    assert internet_checksum(data) == scapy_checksum(data)


def test_checksum_edge_cases():
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\x00\x00") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0x0000     # ones' complement sum 0xFFFF, not 0
    assert internet_checksum(b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7") == 0x220D  # RFC 1071 example, complemented
    assert internet_checksum(b"\x01") == 0xFEFF          # odd length pads at the end


def test_parse_mac():
    assert parse_mac("02:AA:bb:0c:0d:0e") == bytes.fromhex("02aabb0c0d0e")
    assert parse_mac("02-aa-bb-0c-0d-0e") == bytes.fromhex("02aabb0c0d0e")
    for bad in ("", "02:aa:bb:0c:0d", "02:aa:bb:0c:0d:0e:0f", "zz:aa:bb:0c:0d:0e", "2:aa:bb:0c:0d:0e0"):
        with pytest.raises(ValueError, match="MAC"):
            parse_mac(bad)


def test_redirect_payload_is_exact():
    assert redirect_payload("/x") == (b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n"
                                      b"Connection: close\r\nCache-Control: no-store\r\n\r\n")


# ---- the Injector on real interfaces (namespaces) ---------------------------------------------

needs_netns = [pytest.mark.root, pytest.mark.skipif(netns_problem() is not None, reason=f"{netns_problem()}")]


@pytest.fixture(scope="module")
def topo():
    problem = netns_problem()
    if problem:
        pytest.skip(problem)
    with Topology() as topology:
        yield topology


@pytest.mark.root
def test_injector_counts_bad_input_and_never_raises(topo):
    seg, frame = _captured(topo.client_ip4, topo.origin_ip4)
    with topo.router.entered():
        injector = Injector(topo.router_client_if)
    with injector:
        assert injector.redirect(seg, frame, "http://x/\r\nEvil: 1") == 0
        assert injector.redirect(seg, frame[:10], LOCATION) == 0
        empty = Segment(**{**{f: getattr(seg, f) for f in seg.__slots__}, "payload": b""})
        assert injector.redirect(empty, frame, LOCATION) == 0
        assert injector.failures == {"bad_location": 1, "bad_frame": 1, "no_payload": 1}
        assert injector.sent == 0


@pytest.mark.root
def test_injector_link_headers_with_explicit_and_own_macs(topo):
    seg, frame = _captured(topo.client_ip4, topo.origin_ip4)
    router_c = bytes.fromhex(topo.router.mac(topo.router_client_if).replace(":", ""))
    router_o = bytes.fromhex(topo.router.mac(topo.router_origin_if).replace(":", ""))
    with topo.router.entered():
        explicit = Injector(topo.router_client_if, origin_interface=topo.router_origin_if,
                            origin_mac="02:00:00:00:00:99")
        own = Injector(topo.router_client_if, own_source_mac=True)
    with explicit, own:
        link = explicit.link_headers(frame)
        assert link.to_client == parse_mac(CLIENT_MAC) + parse_mac(ORIGIN_MAC)
        assert link.to_origin == parse_mac("02:00:00:00:00:99") + router_o
        link = own.link_headers(frame)
        assert link.to_client == parse_mac(CLIENT_MAC) + router_c
        assert link.to_origin == parse_mac(ORIGIN_MAC) + router_c


def test_injector_on_missing_interface_fails_clearly():
    with pytest.raises(OSError):
        Injector("ct-no-such-if0")


ORIGIN_SCRIPT = textwrap.dedent("""
    import os, socket, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    delay, log, released = float(sys.argv[1]), open(sys.argv[2], "a", buffering=1), sys.argv[3]
    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            time.sleep(delay)  # the kernel has no netem: the origin itself is slow
            # On a loaded machine the sniffer may be late; /hot/ answers wait for it, so the test
            # checks what happens to a late answer without racing the scheduler.
            deadline = time.monotonic() + 20
            while self.path.startswith("/hot/") and not os.path.exists(released) and time.monotonic() < deadline:
                time.sleep(0.005)
            body = b"ORIGIN-BODY " * 100
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                log.write(f"{self.path} answered\\n")
            except OSError as exc:
                log.write(f"{self.path} {type(exc).__name__}\\n")
            self.close_connection = True
        def log_message(self, *args):
            pass
    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True
    server = Server(("::", 80), Slow)
    print("ready", flush=True)
    server.serve_forever()
""")


class RouterRedirector(threading.Thread):
    """A tiny sniff loop on the router: redirect GETs whose path starts with /hot/."""

    def __init__(self, topo: Topology, location: str, released: Path) -> None:
        super().__init__(daemon=True)
        from scapy.all import conf
        with topo.router.entered():
            self.listen = conf.L2listen(iface=topo.router_client_if, filter="tcp dst port 80")
            origin_mac = topo.origin.mac(topo.origin_if)
            # 302 on the capture interface (captured MACs swapped); RST out of the other interface.
            self.injector = Injector(topo.router_client_if, origin_interface=topo.router_origin_if,
                                     origin_mac=origin_mac)
        self.location = location
        self.released = released
        self.stop = threading.Event()
        self.sent: list[tuple[float, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not select.select([self.listen.ins], [], [], 0.05)[0]:
                    continue
                _, frame, ts = self.listen.recv_raw(65535)
                if frame is None:
                    continue
                seg = decode_frame(1, frame, ts)
                if isinstance(seg, Segment) and seg.payload.startswith(b"GET /hot/"):
                    assert self.injector.redirect(seg, frame, self.location) == 2, self.injector.failures
                    self.sent.append((ts, self.injector.last_sent_at))
                    self.released.touch()
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=10)
        self.listen.close()
        self.injector.close()
        if self.error:
            raise self.error


@pytest.mark.root
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_client_receives_302_before_slow_origin(topo, tmp_path, family):
    log, released = tmp_path / "origin.log", tmp_path / "released"
    origin = topo.origin.popen([sys.executable, "-c", ORIGIN_SCRIPT, "0.05", str(log), str(released)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert origin.stdout.readline().strip() == "ready"
        host = topo.origin_ip4 if family == "ipv4" else f"[{topo.origin_ip6}]"
        location = f"http://{topo.router_client_ip4}:8080/c/0123456789abcdef0123456789abcdef/big.iso?x=%20"
        redirector = RouterRedirector(topo, location, released)
        redirector.start()
        try:
            curl = ["curl", "-sS", "-D-", "--max-time", "20", "--globoff"]
            hot = topo.client.run([*curl, f"http://{host}/hot/big.iso"])
            cold = topo.client.run([*curl, f"http://{host}/cold/small.txt"])
        finally:
            redirector.close()
        head = hot.stdout.splitlines()
        assert head[0] == "HTTP/1.1 302 Found"
        assert f"Location: {location}" in head
        assert "ORIGIN-BODY" not in hot.stdout and "200" not in head[0]
        assert len(redirector.sent) == 1 and redirector.injector.failures == {}
        # The control request is left alone and answered by the (slow) origin.
        assert cold.stdout.startswith("HTTP/1.1 200") and "ORIGIN-BODY" in cold.stdout
    finally:
        origin.terminate()
        origin.wait(timeout=10)
    # The RST was accepted by the origin's kernel: its late answer to /hot/ hit a reset connection.
    lines = log.read_text().splitlines()
    assert "/cold/small.txt answered" in lines
    assert any(line.startswith("/hot/big.iso ") and "answered" not in line for line in lines), lines


# ---- configuration ----------------------------------------------------------------------------

def test_bad_redirect_mac_in_settings_is_named():
    from cachetap.settings import ConfigError, load_settings
    with pytest.raises(ConfigError, match="redirect_origin_mac"):
        load_settings(redirect_origin_mac="02:00:00:00:00")
    with pytest.raises(ConfigError, match="redirect_client_mac"):
        load_settings(redirect_client_mac="gg:00:00:00:00:01")


def test_from_settings_needs_an_interface():
    from cachetap.settings import load_settings
    with pytest.raises(ValueError, match="inject_interface"):
        Injector.from_settings(load_settings())


@pytest.mark.root
def test_from_settings_applies_the_redirect_section(topo):
    from cachetap.settings import load_settings
    settings = load_settings(interface="ct-capture-only", inject_interface=topo.router_client_if,
                             redirect_origin_interface=topo.router_origin_if,
                             redirect_origin_mac="02-00-00-00-00-77", redirect_own_source_mac=True)
    seg, frame = _captured(topo.client_ip4, topo.origin_ip4)
    with topo.router.entered():
        injector = Injector.from_settings(settings)
    with injector:
        link = injector.link_headers(frame)
    router_c = parse_mac(topo.router.mac(topo.router_client_if))
    router_o = parse_mac(topo.router.mac(topo.router_origin_if))
    assert link.to_client == parse_mac(CLIENT_MAC) + router_c
    assert link.to_origin == parse_mac("02:00:00:00:00:77") + router_o


@pytest.mark.root
def test_failed_send_is_counted_not_raised(topo):
    # A veth whose peer is down: the kernel refuses to transmit (ENETDOWN), like an unplugged port.
    topo.router.run(["ip", "link", "add", "ct-down0", "type", "veth", "peer", "name", "ct-down1"])
    try:
        seg, frame = _captured(topo.client_ip4, topo.origin_ip4)
        with topo.router.entered():
            injector = Injector("ct-down0")
        with injector:
            assert injector.redirect(seg, frame, LOCATION) == 0
            assert injector.sent == 0
            assert list(injector.failures) == ["send_enetdown"]
    finally:
        topo.router.run(["ip", "link", "del", "ct-down0"])


def test_by_default_injected_frames_carry_the_interface_s_own_source_mac(topo):
    """Seen failing on 34b94e0: the default copied the captured frame's MACs, so a forged GET chose the
    source MAC of the frames cachetap transmits."""
    from cachetap.settings import load_settings
    seg, frame = _captured(topo.client_ip4, topo.origin_ip4)
    chosen = parse_mac("02:de:ad:be:ef:01")
    frame = frame[:6] + chosen + frame[12:]  # the attacker's pick as the frame's source
    with topo.router.entered():
        injector = Injector.from_settings(load_settings(interface=topo.router_client_if))
    router_c = parse_mac(topo.router.mac(topo.router_client_if))
    with injector:
        link = injector.link_headers(frame)
        assert link.to_client[6:12] == router_c and link.to_origin[6:12] == router_c
        assert chosen not in (link.to_client[6:12], link.to_origin[6:12])
