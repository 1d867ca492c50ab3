"""LiveSource on real interfaces: a real HTTP server and curl on loopback, errors opening, prompt stop."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from cachetap.capture.bpf import request_filter
from cachetap.capture.linklayer import decode_frame
from cachetap.capture.sniffer import CaptureOpenError, LiveSource, interface_linktype
from cachetap.core.types import Segment

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root (CAP_NET_RAW)")
pytestmark = [pytest.mark.root]
HANG_GUARD = 60.0  # seconds; only to fail instead of hanging, never a speed expectation


class Collector:
    """Iterate a LiveSource in a thread, keeping decoded segments."""

    def __init__(self, source: LiveSource) -> None:
        self.source = source
        self.frames: list[tuple[float, int, bytes]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for frame in self.source:
            self.frames.append(frame)

    def segments(self) -> list[Segment]:
        return [decode_frame(lt, f, ts) for ts, lt, f in list(self.frames)]

    def wait_for(self, needle: bytes) -> None:
        deadline = time.monotonic() + HANG_GUARD
        while not any(isinstance(s, Segment) and needle in s.payload for s in self.segments()):
            assert time.monotonic() < deadline, f"{needle!r} never arrived"
            time.sleep(0.05)

    def stop(self) -> None:
        self.source.stop()
        self.thread.join(HANG_GUARD)
        assert not self.thread.is_alive(), "iteration did not end after stop()"


@pytest.fixture
def origin(tmp_path):
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving a 200 kB file."""
    (tmp_path / "big.iso").write_bytes(os.urandom(200_000))
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()


def curl(*args: str) -> None:
    subprocess.run(["curl", "-s", "-o", os.devnull, "--max-time", "30", *args], check=True)


@needs_root
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_get_through_kernel_filter_on_loopback(origin):
    port = origin
    with LiveSource("lo", request_filter([port])) as source:
        collector = Collector(source)
        curl(f"http://127.0.0.1:{port}/big.iso")
        curl("-d", "GET body", f"http://127.0.0.1:{port}/form")
        curl("-I", f"http://127.0.0.1:{port}/big.iso")
        curl(f"http://127.0.0.1:{port}/sentinel")
        # Frames reach the socket in order, so once the sentinel is here everything before it is too.
        collector.wait_for(b"/sentinel")
        collector.stop()
        stats = source.stats()
    assert source.linktype == 1
    segments = collector.segments()
    assert all(isinstance(s, Segment) for s in segments)
    firsts = [s.payload.split(b"\r\n", 1)[0] for s in segments]
    # Exactly one copy of each request start: no response data, no POST, no loopback duplicates.
    assert firsts == [b"GET /big.iso HTTP/1.1", b"HEAD /big.iso HTTP/1.1", b"GET /sentinel HTTP/1.1"]
    assert all(s.dst == "127.0.0.1" and s.dport == port and s.src == "127.0.0.1" for s in segments)
    assert all(abs(ts - time.time()) < 3600 for ts, _, _ in collector.frames)  # kernel timestamps, epoch based
    assert stats["received"] == 3 and stats["errors"] == 0


@needs_root
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_ipv6_get_on_loopback(tmp_path):
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 on this machine")
    (tmp_path / "six.iso").write_bytes(b"6" * 1000)

    class Server6(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    try:
        server = Server6(("::1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with LiveSource("lo", request_filter([port])) as source:
            collector = Collector(source)
            curl("-g", f"http://[::1]:{port}/six.iso")
            collector.wait_for(b"/six.iso")
            collector.stop()
    finally:
        server.shutdown()
        server.server_close()
    (seg,) = collector.segments()
    assert seg.src == "::1" and seg.dport == port and seg.payload.startswith(b"GET /six.iso ")


@needs_root
def test_stop_from_another_thread_ends_an_idle_capture():
    # A filter nothing matches: the iterator sits in select() until stop().
    with LiveSource("lo", "tcp dst port 1 and tcp[0:4] = 0x01020304") as source:
        collector = Collector(source)
        time.sleep(0.2)
        assert collector.thread.is_alive()
        collector.stop()
    assert collector.frames == []


@needs_root
def test_stop_before_iterating_yields_nothing():
    source = LiveSource("lo", request_filter([80]))
    with source:
        source.stop()
        assert list(source) == []


def test_missing_interface_is_named():
    with pytest.raises(CaptureOpenError, match="nosuch0: no such network interface"):
        LiveSource("nosuch0", request_filter([80])).open()
    with pytest.raises(CaptureOpenError, match="nosuch0"):
        interface_linktype("nosuch0")


@needs_root
def test_bad_filter_is_named():
    with pytest.raises(CaptureOpenError, match="lo: filter 'tcp port banana' rejected"):
        with LiveSource("lo", "tcp port banana"):
            pass


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed")
def test_permission_denied_is_named():
    code = ("from cachetap.capture.sniffer import LiveSource, CaptureOpenError\n"
            "try:\n    LiveSource('lo', None).open()\n"
            "except CaptureOpenError as exc:\n    print(exc)\n")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "--inh-caps=-all", sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=120)
    assert "cannot capture on lo: permission denied" in result.stdout, result.stderr


def test_loopback_link_type():
    assert interface_linktype("lo") == 1


# ---- VLAN-tagged frames on a veth pair between two throw-away network namespaces -----------------

CAPTURE_IN_NAMESPACE = r"""
import json
from cachetap.capture.bpf import request_filter
from cachetap.capture.linklayer import decode_frame
from cachetap.capture.sniffer import LiveSource

with LiveSource("ctapveth0", request_filter([80, 8080])) as source:
    print("ready", flush=True)
    for ts, linktype, frame in source:
        seg = decode_frame(linktype, frame, ts)
        print(json.dumps({"linktype": linktype, "vlan": seg.vlan, "payload": seg.payload.decode("latin-1")}),
              flush=True)
        if b"/sentinel" in seg.payload:
            break
"""

SEND_IN_NAMESPACE = r"""
from scapy.sendrecv import sendp
from cachetap.testing.pcaps import http_get_packets

frames = []
frames += http_get_packets("10.42.0.2", "10.42.0.1", "h", "/tagged.iso", vlan=42, response_bytes=3000)
frames += http_get_packets("10.42.0.2", "10.42.0.1", "h", "/form", vlan=42, method="POST", body=b"GET x",
                           client_port=40001)
frames += http_get_packets("fd42::2", "fd42::1", "h", "/tagged6.iso", vlan=42, server_port=8080, client_port=40002)
frames += http_get_packets("10.42.0.2", "10.42.0.1", "h", "/qinq.iso", vlan=(100, 42), client_port=40003)
frames += http_get_packets("10.42.0.2", "10.42.0.1", "h", "/sentinel", client_port=40004)
sendp(frames, iface="ctapveth1", verbose=False)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def veth_namespaces():
    """Namespaces A and B joined by a veth pair (ctapveth0 in A, ctapveth1 in B), links up, no addresses."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    a, b = f"ctapA{os.getpid()}", f"ctapB{os.getpid()}"
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        _ip("link", "add", "ctapveth0", "netns", a, "type", "veth", "peer", "name", "ctapveth1", "netns", b)
        _ip("-n", a, "link", "set", "ctapveth0", "up")
        _ip("-n", b, "link", "set", "ctapveth1", "up")
        yield a, b
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot build network namespaces here: {exc.stderr.decode().strip()}")
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@needs_root
def test_vlan_tags_survive_the_kernel_and_the_filter(veth_namespaces):
    import json

    a, b = veth_namespaces
    capture = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", CAPTURE_IN_NAMESPACE],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert capture.stdout.readline().strip() == "ready", capture.stderr.read()
        subprocess.run(["ip", "netns", "exec", b, sys.executable, "-c", SEND_IN_NAMESPACE],
                       check=True, capture_output=True, timeout=HANG_GUARD)
        out, err = capture.communicate(timeout=HANG_GUARD)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["payload"].split("\r\n", 1)[0], r["vlan"]) for r in records] == [
        ("GET /tagged.iso HTTP/1.1", 42), ("GET /tagged6.iso HTTP/1.1", 42), ("GET /qinq.iso HTTP/1.1", 100),
        ("GET /sentinel HTTP/1.1", None)], err
    # The kernel takes the outer tag off before the filter runs; scapy puts it back from the
    # packet's auxiliary data, so the VLAN id is not lost.
    assert all(r["linktype"] == 1 for r in records)
