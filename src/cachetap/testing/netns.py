"""A small real network of Linux network namespaces for tests and benches, always torn down.

    with Topology() as topo:
        topo.origin.popen([sys.executable, "-m", "http.server", "80"])
        topo.client.run(["curl", "-s", f"http://{topo.origin_ip4}/"])

    client [c-r] <--veth--> [r-c] router [r-o] <--veth--> [o-r] origin

The router forwards IPv4 and IPv6 between the two links, so client->origin traffic crosses it: the
router is where cachetap sniffs (`r-c`) and injects. Nothing is connected to a real interface and the
addresses (10.77.x.x, fd00:77:x::) exist only inside the namespaces. Names are unique per run
(`ct-<pid>-<n>-<role>`); teardown happens on exit from the `with`, on exceptions, at interpreter exit,
and namespaces left by a killed run (its pid gone) are removed by the next one.

`MirrorTopology` is the bypass deployment instead: a switch whose client port is mirrored to cachetap.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Self

from cachetap.lifetime import pid_is_alive

NETNS_DIR = "/run/netns"
PREFIX = "ct-"
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"^ct-(\d+)-")
_counter = itertools.count()
_live: set[_Network] = set()
_live_lock = threading.Lock()
_problem: list[str | None] = []


class NetnsError(RuntimeError):
    """A namespace command failed; the message carries the command and its stderr."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def netns_problem() -> str | None:
    """Why namespaces cannot be used here (a reason for pytest.skip), or None when they can."""
    if not _problem:
        _problem.append(_probe())
    return _problem[0]


def netns_available() -> bool:
    return netns_problem() is None


def _probe() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    name = f"{PREFIX}{os.getpid()}-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", name)
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("-n", name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
    except NetnsError as exc:
        return f"cannot create a veth pair: {exc}"
    finally:
        with contextlib.suppress(NetnsError):
            _ip("netns", "del", name)
    return None


def remove_stale_namespaces() -> list[str]:
    """Delete `ct-<pid>-...` namespaces whose creating process is gone; returns their names."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(NETNS_DIR):
            match = _NAME_RE.match(name)
            if match and not pid_is_alive(int(match.group(1))):
                with contextlib.suppress(NetnsError):
                    _ip("netns", "del", name)
                    removed.append(name)
    return removed


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Namespace:
    """One network namespace: run commands in it, or enter it from the current thread."""

    def __init__(self, name: str, interfaces: dict[str, str]) -> None:
        self.name = name
        self.interfaces = interfaces   # role ("router", "client", "origin") of the peer -> local name
        self._procs: list[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            **kwargs: Any) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), check=check, timeout=timeout, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start a process in the namespace; it is ended at teardown if still running."""
        kwargs.setdefault("start_new_session", True)  # so teardown can end its children too
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def mac(self, interface: str) -> str:
        out = self.run(["cat", f"/sys/class/net/{interface}/address"]).stdout
        return out.strip()

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread (only it) into this namespace for the block.

        Sockets created inside stay in the namespace after the block, so a test can open its
        capture and injection sockets here and use them from anywhere.
        """
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(os.path.join(NETNS_DIR, self.name), os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)

    def stop_processes(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self._procs.clear()


class _Network:
    """Namespaces that `_build` wires together; processes stopped and namespaces deleted on close."""

    def __init__(self) -> None:
        self._base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self._created: list[Namespace] = []

    @property
    def namespaces(self) -> list[Namespace]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        problem = netns_problem()
        if problem:
            raise NetnsError(problem)
        remove_stale_namespaces()
        with _live_lock:
            _live.add(self)
        try:
            for ns in self.namespaces:
                _ip("netns", "add", ns.name)
                self._created.append(ns)
                _ip("-n", ns.name, "link", "set", "lo", "up")
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the processes started in the namespaces and delete them; safe to call twice."""
        errors = []
        for ns in self.namespaces:
            ns.stop_processes()
        for ns in reversed(self._created):
            try:
                _ip("netns", "del", ns.name)
            except NetnsError as exc:
                errors.append(str(exc))
        self._created.clear()
        with _live_lock:
            _live.discard(self)
        if errors:
            raise NetnsError("; ".join(errors))


class Topology(_Network):
    """client <-> router <-> origin, IPv4 and IPv6, forwarding on the router. A context manager."""

    client_ip4, router_client_ip4, router_origin_ip4, origin_ip4 = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2"
    client_ip6, router_client_ip6, router_origin_ip6, origin_ip6 = "fd00:77:1::2", "fd00:77:1::1", "fd00:77:2::1", "fd00:77:2::2"
    client_if, router_client_if, router_origin_if, origin_if = "c-r", "r-c", "r-o", "o-r"

    def __init__(self) -> None:
        super().__init__()
        base = self._base
        self.client = Namespace(f"{base}-c", {"router": self.client_if})
        self.router = Namespace(f"{base}-r", {"client": self.router_client_if, "origin": self.router_origin_if})
        self.origin = Namespace(f"{base}-o", {"router": self.origin_if})

    @property
    def namespaces(self) -> list[Namespace]:
        return [self.client, self.router, self.origin]

    def _build(self) -> None:
        c, r, o = self.client.name, self.router.name, self.origin.name
        # Created directly inside the namespaces: the names never exist next to real interfaces.
        _ip("link", "add", self.client_if, "netns", c, "type", "veth", "peer", "name", self.router_client_if, "netns", r)
        _ip("link", "add", self.origin_if, "netns", o, "type", "veth", "peer", "name", self.router_origin_if, "netns", r)
        for ns, ifname, ip4, ip6 in (
            (c, self.client_if, self.client_ip4, self.client_ip6),
            (r, self.router_client_if, self.router_client_ip4, self.router_client_ip6),
            (r, self.router_origin_if, self.router_origin_ip4, self.router_origin_ip6),
            (o, self.origin_if, self.origin_ip4, self.origin_ip6),
        ):
            _ip("-n", ns, "addr", "add", f"{ip4}/24", "dev", ifname)
            _ip("-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", ifname, "nodad")  # usable at once
            _ip("-n", ns, "link", "set", ifname, "up")
        for ns, via4, via6 in ((c, self.router_client_ip4, self.router_client_ip6),
                               (o, self.router_origin_ip4, self.router_origin_ip6)):
            _ip("-n", ns, "route", "add", "default", "via", via4)
            _ip("-n", ns, "-6", "route", "add", "default", "via", via6)
        self.router.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && "
                                     "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"])


class MirrorTopology(_Network):
    """A switch with a mirror (SPAN) port: cachetap sees the client's traffic but is not in its path.

        client  [c-s] --- [s-c] -+
        gateway [g-s] --- [s-g] -+- bridge br0, the switch, in its own namespace
        tap     [t-i] --- [s-i] -+  cachetap's injection port: an ordinary switch port
        tap     [t-m] --- [s-m]     the mirror destination, outside the bridge: tc mirred copies
                                    every frame entering and leaving s-c to it

    The gateway namespace also holds the origin (`origin_ip4` on its loopback, another subnet), so
    the client's frames towards the origin carry the gateway's MAC, as behind any router. The client's
    default route is the gateway; nothing routes through the tap, whose only address is on `t-i`.
    IPv4 only.
    """

    client_ip4, gateway_ip4, tap_ip4, origin_ip4 = "10.78.1.2", "10.78.1.1", "10.78.1.5", "10.78.2.2"
    client_if, gateway_if, inject_if, capture_if = "c-s", "g-s", "t-i", "t-m"
    switch_client_if, switch_gateway_if, switch_inject_if, switch_mirror_if = "s-c", "s-g", "s-i", "s-m"
    bridge = "br0"

    def __init__(self) -> None:
        super().__init__()
        base = self._base
        self.client = Namespace(f"{base}-c", {"switch": self.client_if})
        self.switch = Namespace(f"{base}-s", {"client": self.switch_client_if, "gateway": self.switch_gateway_if,
                                              "tap": self.switch_inject_if, "mirror": self.switch_mirror_if})
        self.gateway = Namespace(f"{base}-g", {"switch": self.gateway_if})
        self.tap = Namespace(f"{base}-t", {"switch": self.inject_if, "mirror": self.capture_if})

    @property
    def namespaces(self) -> list[Namespace]:
        return [self.client, self.switch, self.gateway, self.tap]

    def _build(self) -> None:
        sw = self.switch.name
        _ip("-n", sw, "link", "add", self.bridge, "type", "bridge", "stp_state", "0")
        for ns, ifname, port in ((self.client, self.client_if, self.switch_client_if),
                                 (self.gateway, self.gateway_if, self.switch_gateway_if),
                                 (self.tap, self.inject_if, self.switch_inject_if),
                                 (self.tap, self.capture_if, self.switch_mirror_if)):
            _ip("link", "add", ifname, "netns", ns.name, "type", "veth", "peer", "name", port, "netns", sw)
            if port != self.switch_mirror_if:
                _ip("-n", sw, "link", "set", port, "master", self.bridge)
            _ip("-n", sw, "link", "set", port, "up")
            _ip("-n", ns.name, "link", "set", ifname, "up")
        _ip("-n", sw, "link", "set", self.bridge, "up")
        for ns, ifname, ip4 in ((self.client, self.client_if, self.client_ip4),
                                (self.gateway, self.gateway_if, self.gateway_ip4),
                                (self.tap, self.inject_if, self.tap_ip4)):
            _ip("-n", ns.name, "addr", "add", f"{ip4}/24", "dev", ifname)
        _ip("-n", self.gateway.name, "addr", "add", f"{self.origin_ip4}/32", "dev", "lo")
        for ns in (self.client, self.tap):
            _ip("-n", ns.name, "route", "add", "default", "via", self.gateway_ip4)
        self.mirror(self.switch_client_if, self.switch_mirror_if)

    def mirror(self, port: str, to: str) -> None:
        """Copy every frame entering and leaving switch port `port` to `to` (clsact, u32 match-all, mirred)."""
        self.switch.run(["tc", "qdisc", "add", "dev", port, "clsact"])
        for direction in ("ingress", "egress"):
            self.switch.run(["tc", "filter", "add", "dev", port, direction, "protocol", "all", "u32", "match", "u32",
                             "0", "0", "action", "mirred", "egress", "mirror", "dev", to])

    def learned_macs(self) -> dict[str, str]:
        """The switch's learned (not local) forwarding entries: MAC -> bridge port."""
        out = self.switch.run(["bridge", "-j", "fdb", "show", "br", self.bridge]).stdout
        return {entry["mac"]: entry["ifname"] for entry in json.loads(out or "[]")
                if entry.get("master") == self.bridge and entry.get("state") != "permanent"
                and "self" not in entry.get("flags", [])}


@atexit.register
def _close_all() -> None:
    with _live_lock:
        live = list(_live)
    for topo in live:
        with contextlib.suppress(Exception):
            topo.close()
