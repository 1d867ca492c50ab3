"""The cache's own name resolution: which addresses a host really has.

Used twice: by the poisoning guard (a sighting counts only when its destination is among these
addresses) and by every probe and download (we connect to these, never to the address a client used).
Configured overrides win over DNS, so tests and split-horizon setups can pin a host.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# A failed lookup is remembered briefly so a burst of sightings for a dead name costs one query.
NEGATIVE_TTL = 5.0


class Resolver:
    """Cached host -> addresses lookups (overrides first, then `socket.getaddrinfo`)."""

    def __init__(self, overrides: Mapping[str, list[str]] | None = None, ttl: float = 60.0,
                 negative_ttl: float = NEGATIVE_TTL, clock: Callable[[], float] = time.monotonic):
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
