"""The bypass deployment, end to end: cachetap on a switch's mirror port, not in the client's path.

    client (10.78.1.2; 10.78.1.3 out of scope) --+
    gateway (10.78.1.1) + origin (10.78.2.2)   --+-- bridge br0 (the switch)
    cachetap's injection port (10.78.1.5)      --+
    cachetap's capture port  <-- tc mirred copy of every frame entering and leaving the client's port

A real `cachetap run` (workers, beat, cache server, live capture in redirect mode) sniffs the mirror
copy and injects through its own switch port. The settings name no MAC address: the 302 goes to the
client's MAC and the RST to the gateway's, both read from the mirrored frame, and both leave with the
injection port's own source MAC. The switch must never learn the client's or the gateway's MAC on
cachetap's port (that would send their traffic to cachetap and cut the network): `bridge monitor fdb`
records every learned or moved entry for the whole module, and `bridge fdb` is compared before and after.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from ipaddress import ip_network
from pathlib import Path

import pytest

from cachetap.testing.netns import MirrorTopology, netns_problem
from cachetap.testing.netstack import (DualStackServer, NamespaceOrigin, Stack, missing_tools, redirect_config,
                                      sha256)
from cachetap.testing.origin import Resource

pytestmark = pytest.mark.root

SERVE_PORT = 8642
ORIGIN_DELAY = 0.1      # seconds before the origin answers: the 302 has to beat it, as across a WAN
OUT_OF_SCOPE_CLIENT = "10.78.1.3"
MIB = 1 << 20
FILES = {"/files/mirror.bin": 2 * MIB, "/files/scope.bin": 1 * MIB, "/files/survive.bin": 1 * MIB}


class MirrorStack(Stack):
    def __init__(self, topo: MirrorTopology, *args, fdb_events: Path, **kwargs) -> None:
        super().__init__(topo, *args, **kwargs)
        self.fdb_events = fdb_events
        self.fdb_before: dict[str, str] = {}

    def macs(self) -> dict[str, str]:
        topo = self.topo
        return {"client": topo.client.mac(topo.client_if), "gateway": topo.gateway.mac(topo.gateway_if),
                "tap": topo.tap.mac(topo.inject_if)}

    def macs_learned_on_the_injection_port(self) -> set[str]:
        """Every MAC the switch learned on cachetap's injection port since the module started."""
        port = f" dev {self.topo.switch_inject_if} "
        return {line.split()[0] for line in self.fdb_events.read_text().splitlines()
                if port in f" {line} " and not line.startswith("Deleted") and "permanent" not in line}

    def access_log_redirects(self) -> list[str]:
        """Client addresses of the TCP_REDIRECT lines in the access log."""
        path = self.config.parent / "cache" / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [line.split()[2] for line in lines if "TCP_REDIRECT/302" in line]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    problem = netns_problem() or missing_tools("curl", "wget", "ip", "tc", "bridge", "tcpdump")
    if problem:
        pytest.skip(problem)
    work = tmp_path_factory.mktemp("redirect-mirror")
    with MirrorTopology() as topo:
        topo.client.run(["ip", "addr", "add", f"{OUT_OF_SCOPE_CLIENT}/24", "dev", topo.client_if])
        fdb_events = work / "fdb-events.txt"
        with open(fdb_events, "wb") as out:
            topo.switch.popen(["bridge", "monitor", "fdb"], stdout=out, stderr=subprocess.STDOUT)
        origin = NamespaceOrigin(topo.gateway)
        for path, size in FILES.items():
            origin.add(path, Resource(size=size, delay=ORIGIN_DELAY, cache_control="public, max-age=86400"))
        origin.start()
        # No MAC setting: the destinations come from the mirrored frames, the source is cachetap's own.
        config = redirect_config(work, interface=topo.capture_if, serve_ip=topo.tap_ip4, serve_port=SERVE_PORT,
                                 lines=[f'inject_interface = "{topo.inject_if}"',
                                        f'fetch_allow_networks = ["{ip_network(topo.origin_ip4 + "/24", strict=False)}"]',
                                        f'redirect_client_subnets = ["{topo.client_ip4}/32"]'])
        stack = MirrorStack(topo, origin, config, work / "cachetap-run.log", tap=topo.tap,
                            capture_if=topo.capture_if, serve_ip=topo.tap_ip4, serve_port=SERVE_PORT,
                            files=dict(FILES), fdb_events=fdb_events)
        # The switch learns where the client and the gateway are before cachetap sends anything.
        topo.client.run(["curl", "-s", "-o", "/dev/null", "--max-time", "10", stack.url("/files/scope.bin")])
        stack.fdb_before = topo.learned_macs()
        with stack.running():
            yield stack


def _wait_for_resets(at_least: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while DualStackServer.resets < at_least and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def _frames_to_the_client(stack: MirrorStack, bpf: str):
    """(source MAC, destination MAC) of each frame matching `bpf` that the client receives in the block."""
    out, err = stack.log.parent / "client-frames.txt", stack.log.parent / "client-frames.err"
    seen: list[tuple[str, str]] = []
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        dump = stack.topo.client.popen(["tcpdump", "-i", stack.topo.client_if, "-Q", "in", "-e", "-n", "-l",
                                        "-U", bpf], stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + 10
    while b"listening on" not in err.read_bytes() and time.monotonic() < deadline:
        assert dump.poll() is None, err.read_text()
        time.sleep(0.05)
    try:
        yield seen
        time.sleep(0.3)  # the last frame printed
    finally:
        dump.terminate()
        dump.wait(timeout=10)
    for line in out.read_text().splitlines():  # "<time> <src MAC> > <dst MAC>, ethertype IPv4 ..."
        fields = line.split()
        if len(fields) > 3 and fields[2] == ">":
            seen.append((fields[1], fields[3].rstrip(",")))


# ---- tests ------------------------------------------------------------------------------------

def test_switch_learned_client_and_gateway_on_their_own_ports_before_cachetap_ran(stack):
    macs, topo = stack.macs(), stack.topo
    assert stack.fdb_before.get(macs["client"]) == topo.switch_client_if, stack.fdb_before
    assert stack.fdb_before.get(macs["gateway"]) == topo.switch_gateway_if, stack.fdb_before


def test_curl_and_wget_are_redirected_with_identical_bytes_and_the_origin_is_reset(stack):
    path = "/files/mirror.bin"
    url = stack.url(path)
    stack.admit(url)
    stats = stack.origin.stats(path)
    gets, body_bytes, resets = stats.methods["GET"], stats.body_bytes, DualStackServer.resets

    with _frames_to_the_client(stack, "tcp src port 80 and tcp[tcpflags] & tcp-fin != 0") as seen:
        sent = stack.check_redirected(url)
    # The 302s reached the client's MAC (read from the mirrored GET) from cachetap's own MAC.
    macs = stack.macs()
    assert len(seen) >= sent and set(seen) == {(macs["tap"], macs["client"])}, seen

    # Every GET reached the origin (cachetap is beside the path); each late answer met our RST.
    redirected = stats.methods["GET"] - gets
    assert redirected == sent
    _wait_for_resets(resets + redirected)
    assert DualStackServer.resets - resets == redirected
    assert stats.body_bytes == body_bytes, "the origin sent body bytes to a redirected client"
    assert stack.access_log_redirects().count(stack.topo.client_ip4) >= redirected


def test_out_of_scope_clients_get_nothing_injected(stack):
    path = "/files/scope.bin"
    url, content = stack.url(path), stack.content(path)
    stack.admit(url)
    outside = ("--interface", OUT_OF_SCOPE_CLIENT)
    resets = DualStackServer.resets
    for i in range(3):
        assert stack.status(url, "-r", f"{i}-{i}") == 302  # control: the same key, in scope
        answer = stack.curl(url, *outside, "-r", f"{i}-{i + 99}")
        assert answer.statuses == [206] and answer.body == content[i:i + 100], answer.head
    full = stack.curl(url, *outside)
    assert full.statuses == [200] and sha256(full.body) == sha256(content)
    _wait_for_resets(resets + 3)
    assert DualStackServer.resets - resets == 3  # only the in-scope requests were reset
    assert OUT_OF_SCOPE_CLIENT not in stack.access_log_redirects()


def test_injected_frames_never_move_the_client_or_the_gateway_in_the_switch_table(stack):
    topo, macs = stack.topo, stack.macs()
    assert stack.access_log_redirects(), "nothing was injected before this check"
    after = topo.learned_macs()
    assert after.get(macs["client"]) == topo.switch_client_if, after
    assert after.get(macs["gateway"]) == topo.switch_gateway_if, after
    assert after.get(macs["tap"]) == topo.switch_inject_if, after  # the injected frames' source
    # The table is only a snapshot: the client's next frame would move it back. The monitor saw all
    # (the tap's own MAC may have been learned there before it started).
    assert stack.macs_learned_on_the_injection_port() <= {macs["tap"]}


def test_the_switch_table_check_sees_a_frame_with_the_client_s_source_mac(stack):
    """Control for the test above: a frame from the injection port with the client's source MAC
    (what injection with the captured frame's MACs sends) shows up, and the client then wins it back."""
    topo, macs = stack.topo, stack.macs()
    frame = bytes.fromhex(macs["gateway"].replace(":", "") + macs["client"].replace(":", "")) + b"\x88\xb5" + bytes(46)
    with topo.tap.entered():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind((topo.inject_if, 0))
        sock.send(frame)
    deadline = time.monotonic() + 5
    while macs["client"] not in stack.macs_learned_on_the_injection_port() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert macs["client"] in stack.macs_learned_on_the_injection_port()
    assert stack.status(stack.url("/files/scope.bin"), "--interface", OUT_OF_SCOPE_CLIENT, "-r", "0-0") == 206
    assert topo.learned_macs().get(macs["client"]) == topo.switch_client_if


def test_clients_get_the_origin_when_every_cachetap_process_is_killed(stack):
    url = stack.url("/files/survive.bin")
    stack.admit(url)
    assert stack.status(url, "-r", "0-0") == 302
    stack.kill_all()
    stack.check_origin_answers(url)
