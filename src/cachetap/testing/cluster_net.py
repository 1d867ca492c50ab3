"""Clients in namespaces for a cluster whose nodes stay in the root namespace, on one machine.

    client-1 [c-s] --- [s-c1] -+
    client-2 [c-s] --- [s-c2] -+- bridge br0 (the switch, a namespace of its own)
    gateway  [g-s] --- [s-g]  -+  the origin's address (10.79.2.2) is on the gateway's loopback
    root ns  ct<pid>-<n>i<k> --- [s-i<k>] -+  capture node k's injection port (a switch port)
    root ns  ct<pid>-<n>m<k> --- [s-m<k>]      capture node k's mirror port: tc mirred copies every
                                               frame entering and leaving client k's port s-c<k>

Why the nodes stay in the root namespace: the machine's RabbitMQ, Redis, PostgreSQL and MariaDB
listen on 127.0.0.1 only, and every node (capture and cache) must reach them. So capture node k sniffs
and injects on two veth ends that live in the root namespace but carry no address (ARP answers and
IPv6 are off on them: nothing of the root namespace's own leaks onto the switch), and the cache nodes
listen on 127.0.0.x as they would on their own machines. Only the clients and the origin are in
namespaces, so their GETs really cross a wire a capture node watches.

Two things clients need from the root namespace, both forwarded without giving the root namespace a
route into the namespaces:
- The cache nodes, for the 302's Location (http://127.0.0.x:port/...): `forward(ip, port)` starts a
  socat in each client namespace listening on ip:port there (a namespace's loopback answers for all of
  127/8) and passing each connection over a Unix socket (file-system sockets cross namespaces) to a
  socat in the root namespace that connects to the node. A dead node therefore shows up at the client
  as a connection closed without an answer, not a refusal.
- The origin: `BridgedOrigin` is one test origin (one set of request counters) listening on 127.0.0.1
  in the root namespace, where the cache nodes download from, and on the same port in the gateway
  namespace, where clients reach it by the name `files.test` (`/etc/netns/<client>/hosts`, which
  `ip netns exec` mounts over /etc/hosts; removed with the namespaces).

Every packet stays on loopback or on these veths. Teardown (also on failure, and of namespaces a
killed run left behind) deletes the namespaces, which takes the root-namespace veth ends with them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from cachetap.testing.netns import NETNS_DIR, Namespace, _ip, _Network
from cachetap.testing.netstack import DualStackServer, terminate_with_parent
from cachetap.testing.origin import Origin, PathStats, _Handler

ETC_NETNS = Path("/etc/netns")
ORIGIN_HOST = "files.test"


class ClusterNet(_Network):
    """Two (or `clients`) client namespaces on a switch, each port mirrored to a capture node's
    veth end in the root namespace; a gateway namespace holding the origin's address."""

    gateway_ip4, origin_ip4 = "10.79.1.1", "10.79.2.2"
    client_if, gateway_if = "c-s", "g-s"
    bridge = "br0"

    def __init__(self, clients: int = 2) -> None:
        super().__init__()
        base = self._base
        self.switch = Namespace(f"{base}-s", {})
        self.gateway = Namespace(f"{base}-g", {"switch": self.gateway_if})
        self.clients = [Namespace(f"{base}-c{k}", {"switch": self.client_if}) for k in range(1, clients + 1)]
        self.client_ips = [f"10.79.1.{10 + k}" for k in range(1, clients + 1)]
        pid, n = base.split("-")[1:3]
        tag = f"{pid}x{n}"[-9:]  # root-namespace names: 15 characters at most
        self.mirror_ifs = [f"ct{tag}m{k}" for k in range(1, clients + 1)]
        self.inject_ifs = [f"ct{tag}i{k}" for k in range(1, clients + 1)]
        self._forward_dir = Path(tempfile.mkdtemp(prefix="ct-fwd-"))  # short: Unix socket paths are limited
        self._root_procs: list[subprocess.Popen] = []

    @property
    def namespaces(self) -> list[Namespace]:
        return [self.switch, self.gateway, *self.clients]

    def _build(self) -> None:
        remove_stale_hosts_files()
        sw = self.switch.name
        _ip("-n", sw, "link", "add", self.bridge, "type", "bridge", "stp_state", "0")
        _ip("-n", sw, "link", "set", self.bridge, "up")
        ports = [(self.gateway, self.gateway_if, "s-g")] + [
            (client, self.client_if, f"s-c{k}") for k, client in enumerate(self.clients, 1)]
        for ns, ifname, port in ports:
            _ip("link", "add", ifname, "netns", ns.name, "type", "veth", "peer", "name", port, "netns", sw)
            _ip("-n", sw, "link", "set", port, "master", self.bridge)
            _ip("-n", sw, "link", "set", port, "up")
            _ip("-n", ns.name, "link", "set", ifname, "up")
        _ip("-n", self.gateway.name, "addr", "add", f"{self.gateway_ip4}/24", "dev", self.gateway_if)
        _ip("-n", self.gateway.name, "addr", "add", f"{self.origin_ip4}/32", "dev", "lo")
        for k, (client, ip) in enumerate(zip(self.clients, self.client_ips), 1):
            _ip("-n", client.name, "addr", "add", f"{ip}/24", "dev", self.client_if)
            _ip("-n", client.name, "route", "add", "default", "via", self.gateway_ip4)
            self._root_port(self.inject_ifs[k - 1], f"s-i{k}", bridged=True)
            self._root_port(self.mirror_ifs[k - 1], f"s-m{k}", bridged=False)
            self._mirror(f"s-c{k}", f"s-m{k}")
            hosts = ETC_NETNS / client.name / "hosts"
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_text(f"127.0.0.1 localhost\n{self.origin_ip4} {ORIGIN_HOST}\n")

    def _root_port(self, root_if: str, port: str, bridged: bool) -> None:
        """A veth whose end `root_if` stays in the root namespace, without an address, silent."""
        sw = self.switch.name
        _ip("link", "add", root_if, "type", "veth", "peer", "name", port, "netns", sw)
        Path(f"/proc/sys/net/ipv6/conf/{root_if}/disable_ipv6").write_text("1")
        Path(f"/proc/sys/net/ipv4/conf/{root_if}/arp_ignore").write_text("8")  # never answer ARP here
        if bridged:
            _ip("-n", sw, "link", "set", port, "master", self.bridge)
        _ip("-n", sw, "link", "set", port, "up")
        _ip("link", "set", root_if, "up")

    def _mirror(self, port: str, to: str) -> None:
        self.switch.run(["tc", "qdisc", "add", "dev", port, "clsact"])
        for direction in ("ingress", "egress"):
            self.switch.run(["tc", "filter", "add", "dev", port, direction, "protocol", "all", "u32", "match", "u32",
                             "0", "0", "action", "mirred", "egress", "mirror", "dev", to])

    def forward(self, ip: str, port: int) -> None:
        """Make ip:port of the root namespace (a cache node) reachable at ip:port in every client namespace."""
        sock = self._forward_dir / f"{ip}-{port}.sock"
        self._root_procs.append(subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early", f"TCP:{ip}:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=terminate_with_parent))
        for client in self.clients:
            client.popen(["socat", f"TCP-LISTEN:{port},bind={ip},fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=terminate_with_parent)

    def close(self) -> None:
        for proc in self._root_procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self._root_procs.clear()
        try:
            super().close()
        finally:
            for client in self.clients:
                shutil.rmtree(ETC_NETNS / client.name, ignore_errors=True)
            with contextlib.suppress(OSError):
                ETC_NETNS.rmdir()  # only when empty: made for these namespaces
            shutil.rmtree(self._forward_dir, ignore_errors=True)


def remove_stale_hosts_files() -> None:
    """/etc/netns/ct-* folders whose namespace is gone (a run killed before its teardown)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(ETC_NETNS):
            if name.startswith("ct-") and not os.path.exists(os.path.join(NETNS_DIR, name)):
                shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


class BridgedOrigin(Origin):
    """One origin (the same content) on 127.0.0.1 in the root namespace and on the same port in
    `namespace` (all its addresses, IPv4 and IPv6). Requests are counted per side: `stats(path)` are
    the cache nodes' (root namespace), `client_stats(path)` the clients'. A client's GET reaches the
    origin even when a capture node answers it with a 302 (the tap is passive), so only the cache
    nodes' side tells whether an object was fetched again."""

    def __init__(self, namespace: Namespace, **kwargs) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.client_side = _ClientSide(self)

    def client_stats(self, path: str) -> PathStats:
        return self.client_side._stats_for(path)

    def start(self) -> BridgedOrigin:
        super().start()
        with self.namespace.entered():  # the listening socket lives in the namespace for good
            server = DualStackServer(("::", self.port), _Handler)
        server.origin = self.client_side
        self._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name=f"origin:{self.namespace.name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self


class _ClientSide:
    """The origin as its namespace listener sees it: the same content and lock, counters of its own."""

    def __init__(self, origin: Origin) -> None:
        self._origin = origin
        self._stats: dict[str, PathStats] = {}

    def __getattr__(self, name: str):
        return getattr(self._origin, name)

    def _stats_for(self, path: str) -> PathStats:
        with self._origin._lock:
            return self._stats.setdefault(path, PathStats())
