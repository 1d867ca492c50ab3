"""The namespace harness against the real kernel: it builds a routed network and always removes it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cachetap.testing.netns import (NETNS_DIR, MirrorTopology, NetnsError, Topology, netns_problem,
                                   remove_stale_namespaces)

pytestmark = [pytest.mark.root, pytest.mark.skipif(netns_problem() is not None, reason=f"{netns_problem()}")]


def _namespaces() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def _wait_listening(ns, port: int, host: str = "127.0.0.1") -> None:
    probe = (f"import socket,time\nfor _ in range(400):\n"
             f"    try: socket.create_connection(('{host}',{port}),0.2).close(); break\n"
             f"    except OSError: time.sleep(0.025)\nelse: raise SystemExit('not listening')")
    ns.run([sys.executable, "-c", probe], timeout=30)


def _rx_packets(ns, ifname: str) -> int:
    return int(ns.run(["cat", f"/sys/class/net/{ifname}/statistics/rx_packets"]).stdout)


def test_curl_from_client_reaches_origin_through_router(tmp_path):
    (tmp_path / "hello.txt").write_text("hello from the origin ns\n")
    with Topology() as topo:
        names = {ns.name for ns in topo.namespaces}
        assert names <= _namespaces()
        topo.origin.popen([sys.executable, "-m", "http.server", "8080", "--bind", "::", "--directory", str(tmp_path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(topo.origin, 8080)
        router_rx = _rx_packets(topo.router, topo.router_client_if)
        for host in (topo.origin_ip4, f"[{topo.origin_ip6}]"):
            out = topo.client.run(["curl", "-sS", "--max-time", "20", f"http://{host}:8080/hello.txt"]).stdout
            assert out == "hello from the origin ns\n"
        assert _rx_packets(topo.router, topo.router_client_if) > router_rx  # it did cross the router
        # The origin is not reachable from the root namespace: nothing leaks out.
        assert topo.origin_ip4 not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    assert not names & _namespaces()


def test_mirror_port_sees_the_client_s_traffic_and_nothing_routes_through_it(tmp_path):
    (tmp_path / "hello.txt").write_text("hello from behind the gateway\n")
    with MirrorTopology() as topo:
        topo.gateway.popen([sys.executable, "-m", "http.server", "8080", "--bind", topo.origin_ip4,
                            "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(topo.gateway, 8080, topo.origin_ip4)
        url = f"http://{topo.origin_ip4}:8080/hello.txt"
        for ns in (topo.tap, topo.client):  # ARP settled: its broadcasts reach every port, mirrored too
            assert ns.run(["curl", "-sS", "--max-time", "20", url]).stdout == "hello from behind the gateway\n"
        mirrored = _rx_packets(topo.tap, topo.capture_if)
        assert topo.client.run(["curl", "-sS", "--max-time", "20", url]).stdout == "hello from behind the gateway\n"
        copies = _rx_packets(topo.tap, topo.capture_if) - mirrored
        assert copies >= 8  # both directions of the client's connection were copied
        # The tap's own connection crosses the switch on another port: not mirrored (at most the
        # client's last ACK arrives meanwhile).
        mirrored = _rx_packets(topo.tap, topo.capture_if)
        assert topo.tap.run(["curl", "-sS", "--max-time", "20", url]).stdout == "hello from behind the gateway\n"
        assert _rx_packets(topo.tap, topo.capture_if) - mirrored <= 2
        # The client's only route is the gateway; the switch learned each MAC on its own port.
        assert f"via {topo.gateway_ip4}" in topo.client.run(["ip", "route", "get", topo.origin_ip4]).stdout
        learned = topo.learned_macs()
        assert learned[topo.client.mac(topo.client_if)] == topo.switch_client_if
        assert learned[topo.gateway.mac(topo.gateway_if)] == topo.switch_gateway_if
        assert learned[topo.tap.mac(topo.inject_if)] == topo.switch_inject_if
        names = {ns.name for ns in topo.namespaces}
        assert len(names) == 4 and names <= _namespaces()
    assert not names & _namespaces()


def test_entered_moves_only_this_thread_and_back():
    root_ifaces = {name for _, name in socket.if_nameindex()}
    with Topology() as topo:
        with topo.router.entered():
            inside = {name for _, name in socket.if_nameindex()}
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((topo.router_client_ip4, 0))  # the address only exists in the router ns
        assert {"lo", topo.router_client_if, topo.router_origin_if} == inside
        assert {name for _, name in socket.if_nameindex()} == root_ifaces
        sock.close()
        assert topo.router.mac(topo.router_client_if).count(":") == 5


def test_teardown_on_exception_and_twice():
    with pytest.raises(RuntimeError, match="boom"):
        with Topology() as topo:
            proc = topo.client.popen(["sleep", "60"])
            raise RuntimeError("boom")
    assert proc.poll() is not None  # the process started in the namespace was ended
    assert not {ns.name for ns in topo.namespaces} & _namespaces()
    topo.close()  # idempotent


def test_failing_command_raises_with_stderr():
    with Topology() as topo:
        with pytest.raises(subprocess.CalledProcessError):
            topo.client.run(["ip", "link", "set", "no-such-if", "up"])


def test_stale_namespaces_of_dead_runs_are_removed():
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"ct-{dead.pid}-0-c"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in remove_stale_namespaces()
        assert name not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert f"ct-{os.getpid()}-" not in " ".join(remove_stale_namespaces())


def test_netns_error_names_the_command():
    from cachetap.testing.netns import _ip
    with pytest.raises(NetnsError, match="ip link set definitely-missing"):
        _ip("link", "set", "definitely-missing", "up")
