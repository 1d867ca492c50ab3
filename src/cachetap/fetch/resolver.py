"""The cache's own name resolution: which addresses a host really has.

Used twice: by the poisoning guard (a sighting counts only when its destination is among these
addresses) and by every probe and download (we connect to these, never to the address a client used).
Configured overrides win over DNS, so tests and split-horizon setups can pin a host.

`fetch_addresses` is what probes and downloads connect to: the addresses left after the fetch guard
(`core.egress`: no loopback, link-local, own, private or shared address unless the operator listed
it in `fetch_allow_networks`). It is applied to the addresses actually connected to, after every
lookup (so a DNS answer that changed since the sighting is judged again), and to IP-literal hosts.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from cachetap.core import egress

log = logging.getLogger(__name__)

# A failed lookup is remembered briefly so a burst of sightings for a dead name costs one query.
NEGATIVE_TTL = 5.0
# This machine's addresses are read again after this many seconds (interfaces come and go).
OWN_ADDRESSES_TTL = 30.0


class FetchRefused(Exception):
    """Every address of a host is one the fetch guard refuses; `detail` names them with the reasons."""

    def __init__(self, host: str, refused: Mapping[str, str]):
        self.detail = ", ".join(f"{a} ({r})" for a, r in sorted(refused.items()))
        super().__init__(f"{host}: {self.detail}")
        self.host = host


class Resolver:
    """Cached host -> addresses lookups (overrides first, then `socket.getaddrinfo`)."""

    def __init__(self, overrides: Mapping[str, list[str]] | None = None, ttl: float = 60.0,
                 negative_ttl: float = NEGATIVE_TTL, clock: Callable[[], float] = time.monotonic,
                 allow_networks: Iterable[egress.IPNetwork | str] = ()):
        self.allow_networks = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
        self._own: tuple[float, frozenset[egress.IPAddress]] = (float("-inf"), frozenset())
        self._overrides = {_normalise(h): {str(ipaddress.ip_address(a)) for a in addrs} for h, addrs in (overrides or {}).items()}
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def addresses(self, host: str) -> set[str]:
        """Addresses of `host`; empty when it does not resolve (the reason is logged)."""
        host = _normalise(host)
        if not host:
            return set()
        literal = _ip_literal(host)
        if literal is not None:
            return {literal}
        if host in self._overrides:
            return set(self._overrides[host])
        now = self._clock()
        with self._lock:
            cached = self._cache.get(host)
            if cached is not None and cached[0] > now:
                return set(cached[1])
        found, ok = self._lookup(host)
        with self._lock:
            self._cache[host] = (now + (self._ttl if ok else self._negative_ttl), frozenset(found))
        return set(found)

    @classmethod
    def from_settings(cls, settings) -> Resolver:
        return cls(settings.resolve_overrides, allow_networks=settings.fetch_allow_networks)

    def fetch_addresses(self, host: str) -> list[str]:
        """Addresses of `host` we may connect to, sorted; [] when it does not resolve; raises
        FetchRefused when it resolves only to addresses the fetch guard refuses."""
        found = sorted(self.addresses(host), key=ipaddress.ip_address)
        ok, refused = egress.allowed(found, self.allow_networks, self.own_addresses())
        if refused:
            log.info("not connecting to %s at %s", host, ", ".join(f"{a} ({r})" for a, r in refused.items()))
        if found and not ok:
            raise FetchRefused(host, refused)
        return ok

    def refusal(self, address: str) -> str | None:
        """Why the fetch guard refuses `address` (None: allowed)."""
        return egress.refusal(address, self.allow_networks, self.own_addresses())

    def own_addresses(self) -> frozenset[egress.IPAddress]:
        now = self._clock()
        with self._lock:
            if self._own[0] > now:
                return self._own[1]
        found = frozenset(own_addresses())
        with self._lock:
            self._own = (now + OWN_ADDRESSES_TTL, found)
        return found

    def _lookup(self, host: str) -> tuple[set[str], bool]:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, ValueError) as exc:  # ValueError: idna label too long, NUL
            log.info("resolve %s failed: %s", host, exc)
            return set(), False
        found = {str(ipaddress.ip_address(_strip_scope(info[4][0]))) for info in infos}
        return found, bool(found)


def _normalise(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _strip_scope(addr: str) -> str:
    # getaddrinfo may return link-local IPv6 with a %scope suffix; the wire address never has one.
    return addr.split("%", 1)[0]


def own_addresses(proc: Path = Path("/proc/net")) -> set[egress.IPAddress]:
    """Addresses of this machine's interfaces (IPv4 from the kernel's local routing table, IPv6
    from if_inet6); empty where /proc is missing (the static ranges still apply)."""
    found: set[egress.IPAddress] = set()
    try:
        last = None
        for line in (proc / "fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith(("|--", "+--")):
                last = text[3:].strip().split("/")[0]
            elif text == "/32 host LOCAL" and last:
                found.add(ipaddress.ip_address(last))
    except (OSError, ValueError):
        pass
    try:
        for line in (proc / "if_inet6").read_text().splitlines():
            fields = line.split()
            if fields and len(fields[0]) == 32:
                found.add(ipaddress.IPv6Address(int(fields[0], 16)))
    except (OSError, ValueError):
        pass
    return found
