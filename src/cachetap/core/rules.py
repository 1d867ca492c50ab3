"""Which requests and which objects are worth caching: scope rules from the settings.

`consider` runs for every request seen on the wire, so globs and subnets are compiled once here.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from cachetap.core.admission import ProbeResult
from cachetap.core.keys import host_of, path_of
from cachetap.core.types import Ignore, RequestHead

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RuleSettings(Protocol):
    """The part of `cachetap.settings.Settings` the rules read (core stays below the settings layer)."""

    extensions: Sequence[str]
    content_types: Sequence[str]
    host_allow: Sequence[str]
    host_deny: Sequence[str]
    client_subnets: Sequence[IPNetwork | str]
    min_size: int
    max_size: int

# Decisions are immutable values: build each once instead of per request.
_METHOD, _EXTENSION, _HOST_DENIED, _HOST_NOT_ALLOWED, _CLIENT, _AUTHORIZATION = (
    Ignore(r) for r in ("method", "extension", "host_denied", "host_not_allowed", "client_out_of_scope",
                        "authorization"))
_SIZE_UNKNOWN, _TOO_SMALL, _TOO_LARGE, _CONTENT_TYPE, _NO_STORE, _PRIVATE = (
    Ignore(r) for r in ("size_unknown", "too_small", "too_large", "content_type", "no_store", "private"))
_CLIENT_CACHE_MAX = 65_536  # distinct client addresses remembered; a LAN has far fewer


class Rules:
    def __init__(self, extensions: Iterable[str] = (), content_types: Iterable[str] = (),
                 host_allow: Iterable[str] = (), host_deny: Iterable[str] = (),
                 client_subnets: Iterable[IPNetwork | str] = (), min_size: int = 0,
                 max_size: int = 1 << 62) -> None:
        if min_size < 0 or max_size < min_size:
            raise ValueError(f"need 0 <= min_size <= max_size, got {min_size} and {max_size}")
        self.extensions = frozenset(e.lower().lstrip(".") for e in extensions if e.strip(". "))
        self.content_types = tuple(t.strip().lower() for t in content_types if t.strip())
        self._allow = _compile_globs(host_allow)
        self._deny = _compile_globs(host_deny)
        self.client_subnets = tuple(ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
                                    for n in client_subnets)
        self.min_size = min_size
        self.max_size = max_size
        self._client_in_scope: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, settings: RuleSettings) -> Rules:
        return cls(extensions=settings.extensions, content_types=settings.content_types,
                   host_allow=settings.host_allow, host_deny=settings.host_deny,
                   client_subnets=settings.client_subnets, min_size=settings.min_size,
                   max_size=settings.max_size)

    def consider(self, head: RequestHead, client: str, url: str) -> Ignore | None:
        """Why a request (with its canonical URL) is out of scope, or None if it counts."""
        if head.method != "GET":
            return _METHOD
        if self.extensions and _extension(path_of(url)) not in self.extensions:
            return _EXTENSION
        if self._deny is not None or self._allow is not None:
            host = host_of(url)
            if self._deny is not None and self._deny.match(host):
                return _HOST_DENIED
            if self._allow is not None and not self._allow.match(host):
                return _HOST_NOT_ALLOWED
        if self.client_subnets and not self._client_ok(client):
            return _CLIENT
        if head.authorization:
            return _AUTHORIZATION
        return None

    def accept_probe(self, probe: ProbeResult) -> Ignore | None:
        """Why a probed object is not worth caching, or None if it is."""
        if probe.status != 200:
            return Ignore(f"probe_status_{probe.status}")
        if probe.size is None:
            return _SIZE_UNKNOWN
        if probe.size < self.min_size:
            return _TOO_SMALL
        if probe.size > self.max_size:
            return _TOO_LARGE
        if self.content_types and probe.content_type:
            media_type = probe.content_type.split(";", 1)[0].strip().lower()
            if not media_type.startswith(self.content_types):
                return _CONTENT_TYPE
        if probe.cache_control:
            directives = {d.split("=", 1)[0].strip().lower() for d in probe.cache_control.split(",")}
            if "no-store" in directives:
                return _NO_STORE
            if "private" in directives:
                return _PRIVATE
        return None

    def _client_ok(self, client: str) -> bool:
        known = self._client_in_scope.get(client)
        if known is None:
            known = self._client_in_subnets(client)
            if len(self._client_in_scope) >= _CLIENT_CACHE_MAX:
                self._client_in_scope.clear()
            self._client_in_scope[client] = known
        return known

    def _client_in_subnets(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False  # not an address: never in scope
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.client_subnets)


def _compile_globs(globs: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for a list of host globs (case-insensitive, a trailing dot ignored), None if empty."""
    patterns = [fnmatch.translate(g.strip().lower().rstrip(".")) for g in globs if g.strip()]
    return re.compile("|".join(patterns)) if patterns else None


def _extension(path: str) -> str:
    last = path.rsplit("/", 1)[-1]
    dot = last.rfind(".")
    return last[dot + 1:].lower() if dot >= 0 else ""
