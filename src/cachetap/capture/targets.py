"""The cache servers a capture redirects to: node index (as the hot index holds it) -> URL and health.

Slot 0 is the configured cache server (`public_url`, or serve_host:serve_port), used for objects
whose holder the catalog does not name. Every other slot is a cache node of the registry
(store/nodes.py), numbered as its name is first met in an index event or a reconcile, for the life
of the process (at most 255 of them). Each has its own health gate: a node that stops answering
stops being redirected to within one check interval and a timeout, while the others keep serving.

Where a redirect may point is decided here and only from the registry, which the operator's own
nodes write: an index event names a node, never an address. A node the registry does not know (yet)
has no URL and a closed gate: its keys fail open until it registers.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from cachetap.capture.hotindex import MAX_NODES

log = logging.getLogger(__name__)


class Gate(Protocol):
    ok: bool


class ClosedGate:
    """The gate of a node with no known URL: never open."""

    ok = False

    def stop(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Target:
    name: str | None
    base_url: str | None
    gate: Any  # a Gate with start()/stop(): HealthGate, ClosedGate


@dataclass(frozen=True, slots=True)
class NodeURL:
    """What the targets need of a registry node."""

    name: str
    public_url: str | None


def addresses_of(base_url: str) -> frozenset[tuple[str, int]]:
    """Where a cache server listens, as (address, port) pairs: requests to it are never redirected."""
    parts = urlsplit(base_url)
    port = parts.port or 80
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return frozenset()
    return frozenset((info[4][0], port) for info in infos)


class CacheTargets:
    """`slots[i]` is the target of node index i (read by the capture loop: a list index, no lock).

    Writers (index events, reconcile, the registry refresh) serialise on a lock and replace a slot
    or append one; they never reorder.
    """

    def __init__(self, local_url: str, local_gate: Any, make_gate: Callable[[str], Any] | None = None,
                 read_nodes: Callable[[], Iterable[NodeURL]] | None = None,
                 local_addresses: frozenset[tuple[str, int]] | None = None) -> None:
        self.slots: list[Target] = [Target(None, local_url, local_gate)]
        self._local_addresses = addresses_of(local_url) if local_addresses is None else local_addresses
        self.addresses = self._local_addresses
        self.make_gate = make_gate
        self.read_nodes = read_nodes
        self._by_name: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- writers -------------------------------------------------------------------------------
    def index_of(self, name: str | None) -> int:
        """The node index of `name` (0 for None), making a slot for a name met the first time; -1
        for a node beyond the table's size (its keys are not indexed: they fail open)."""
        if name is None:
            return 0
        found = self._by_name.get(name)
        if found is not None:
            return found
        url = None
        if self.read_nodes is not None:
            try:
                url = next((n.public_url for n in self.read_nodes() if n.name == name), None)
            except Exception as exc:  # registry unreachable: the slot stays closed until a refresh
                log.warning("node registry unreadable while looking up node %s: %s", name, exc)
        with self._lock:
            found = self._by_name.get(name)
            if found is not None:
                return found
            if len(self.slots) >= MAX_NODES:
                log.error("more than %d cache nodes: node %s is not redirected to", MAX_NODES - 1, name)
                return -1
            self.slots.append(self._target(name, url))
            self._by_name[name] = len(self.slots) - 1
            self._update_addresses()
            return len(self.slots) - 1

    def refresh(self, nodes: Iterable[NodeURL]) -> None:
        """Follow the registry: a node whose URL changed gets a new gate; new nodes get slots."""
        for node in nodes:
            index = self._by_name.get(node.name)
            if index is None:
                self.index_of(node.name)
                continue
            with self._lock:
                old = self.slots[index]
                if old.base_url != node.public_url:
                    self.slots[index] = self._target(node.name, node.public_url)
                    if old.gate is not self.slots[0].gate:
                        old.gate.stop()
                    self._update_addresses()

    def _target(self, name: str, url: str | None) -> Target:
        if not url:
            return Target(name, None, ClosedGate())
        if url == self.slots[0].base_url:  # this node's own cache server: one health check is enough
            return Target(name, url, self.slots[0].gate)
        if self.make_gate is None:
            return Target(name, None, ClosedGate())
        try:
            return Target(name, url, self.make_gate(url))
        except ValueError as exc:  # not an http:// URL: never redirected to
            log.warning("node %s: cache server URL %r refused: %s", name, url, exc)
            return Target(name, None, ClosedGate())

    def _update_addresses(self) -> None:
        found = set(self._local_addresses)
        for target in self.slots[1:]:
            if target.base_url:
                found |= addresses_of(target.base_url)
        self.addresses = frozenset(found)

    # --- the registry refresh thread ---------------------------------------------------------------
    def start(self, interval: float) -> CacheTargets:
        if self.read_nodes is not None:
            self._thread = threading.Thread(target=self._run, args=(interval,), name="cachetap-targets",
                                            daemon=True)
            self._thread.start()
        return self

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh(self.read_nodes())
            except Exception as exc:  # the gates keep working with what we know
                log.warning("node registry refresh failed: %s", exc)

    def health(self) -> dict[str, bool]:
        """Each known cache server's health as this capture sees it (for its heartbeat report)."""
        return {t.base_url: bool(t.gate.ok) for t in list(self.slots) if t.base_url}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        stopped: set[int] = set()
        for target in list(self.slots):
            if id(target.gate) not in stopped:
                stopped.add(id(target.gate))
                target.gate.stop()
