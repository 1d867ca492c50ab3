"""The redirect fast path: for a GET of a ready key, inject a 302 to the cache server, in-process.

Runs inside the capture loop with no broker round trip: a hot-index lookup, a few checks and one
raw-socket send. Every check fails open: when in doubt the client simply goes on to the origin.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from cachetap.capture.hotindex import HotIndex
from cachetap.capture.inject import MAX_LOCATION
from cachetap.capture.targets import CacheTargets, Gate
from cachetap.core import egress
from cachetap.core.keys import path_of, port_of
from cachetap.core.types import Redirect, RequestHead, Segment
from cachetap.core.urls import object_url


# Why a GET of a ready key was not redirected: every reason `_refusal` and `failed` give.
REFUSALS = ("cache_server_down", "to_cache_server", "pipelined", "destination_refused", "port_mismatch",
            "out_of_redirect_scope", "loop", "inject_failed")
MAX_REMEMBERED, MAX_REMEMBERED_URL = 4096, 512  # Locations kept, for URLs this short: a few MB at most


@dataclass(frozen=True, slots=True)
class RedirectScope:
    """Which clients and hosts may be redirected (a narrower scope than what is counted and cached)."""

    client_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    host_globs: tuple[str, ...] = ()

    def allows(self, client: str, host: str) -> bool:
        if self.client_networks:
            address = ipaddress.ip_address(client)
            if not any(address in net for net in self.client_networks):
                return False
        return not self.host_globs or any(fnmatch.fnmatchcase(host, g) for g in self.host_globs)


def _public_only(address: str) -> str | None:
    """The fetch guard with nothing allowed beyond public addresses (live capture passes the
    configured one, `fetch.resolver.Resolver.refusal`)."""
    return egress.refusal(address, ())


class Redirector:
    """Decide whether a GET is redirected and where to; counters say why a ready key was not.

    The injection itself is the caller's (capture/inject.py): `decide` then `sent` or `failed`.
    Times (`now`) are the caller's monotonic clock, so the loop guard is tested without sleeping.
    """

    def __init__(self, index: HotIndex, health: Gate, base_url: str,
                 scope: RedirectScope, server_addresses: frozenset[tuple[str, int]],
                 loop_window: float = 1.0, loop_repeats: int = 3, suppress_for: float = 60.0,
                 max_recent: int = 65_536, hint_secret: bytes | None = None,
                 fetch_guard: Callable[[str], str | None] = _public_only,
                 targets: CacheTargets | None = None) -> None:
        self.index = index
        # Node index (as the hot index holds it) -> cache server URL and health gate; slot 0 is
        # `base_url` with `health` (one box, or objects whose holder is not recorded).
        self.targets = targets or CacheTargets(base_url, health, local_addresses=server_addresses)
        self.hint_secret = hint_secret  # signs the origin hint in Location (core/urls.py)
        # A GET sent to an address cachetap would never fetch from (loopback, own, private unless
        # allowed...) is no real download of a cached object but a forged frame: never answered.
        self.fetch_guard = fetch_guard
        self._destinations: dict[str, str | None] = {}  # verdicts per address, bounded
        self.health = health
        self.base_url = base_url
        self.scope = scope
        self.loop_window = loop_window
        self.loop_repeats = loop_repeats
        self.suppress_for = suppress_for
        self.max_recent = max_recent
        # (client, key) -> recent redirect run / suppressed-until time; both bounded.
        self._recent: OrderedDict[tuple[str, str], tuple[float, str | None, int]] = OrderedDict()
        self._suppressed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.skipped: Counter[str] = Counter()
        self.redirected = 0
        # (cache server, URL) -> Location. Building one (quote, HMAC signature) cost more than the rest of
        # the decision; a ready object is by nature asked for again and again. Bounded like _recent.
        self._locations: dict[tuple[str, str], str] = {}

    def decide(self, seg: Segment, head: RequestHead, url: str, key: str, host: str,
               pipelined: bool, now: float) -> Redirect | None:
        node = self.index.lookup(key)
        if node < 0:
            return None
        target = self.targets.slots[node]  # the cache server holding the object
        reason = self._refusal(seg, head, url, key, host, pipelined, now, target.gate)
        if reason is not None:
            self.skipped[reason] += 1
            return None
        memo = (target.base_url, url)
        location = self._locations.get(memo)
        if location is None:
            location = self._location(target.base_url, url, key)
            if len(url) <= MAX_REMEMBERED_URL:
                if len(self._locations) >= MAX_REMEMBERED:
                    self._locations.clear()
                self._locations[memo] = location
        return Redirect(key, location)

    def _location(self, base_url: str, url: str, key: str) -> str:
        location = object_url(base_url, key, location_name(url), origin=url, secret=self.hint_secret)
        if len(location) > MAX_LOCATION:  # the 302 must fit one segment: drop the fallback hint
            location = object_url(base_url, key, location_name(url))
        return location

    def sent(self, seg: Segment, head: RequestHead, key: str, now: float) -> None:
        self._remember(seg.src, key, head.range, now)
        self.redirected += 1

    def failed(self, reason: str = "inject_failed") -> None:
        self.skipped[reason] += 1

    def _refusal(self, seg: Segment, head: RequestHead, url: str, key: str, host: str, pipelined: bool,
                 now: float, gate: Gate) -> str | None:
        if not gate.ok:  # that node's cache server is not answering now: fail open
            return "cache_server_down"
        if (seg.dst, seg.dport) in self.targets.addresses:
            return "to_cache_server"
        if pipelined:
            return "pipelined"  # one 302 + FIN would cut off the requests queued behind it
        if self._destination_refused(seg.dst):
            return "destination_refused"
        if port_of(url) != seg.dport:  # a Host naming another port never chooses where we fetch
            return "port_mismatch"
        if not self.scope.allows(seg.src, host):
            return "out_of_redirect_scope"
        if self._is_loop(seg.src, key, head.range, now):
            return "loop"
        return None

    def _destination_refused(self, address: str) -> bool:
        try:
            return self._destinations[address] is not None
        except KeyError:
            pass
        if len(self._destinations) >= self.max_recent:
            self._destinations.clear()
        verdict = self._destinations[address] = self.fetch_guard(address)
        return verdict is not None

    def _is_loop(self, client: str, key: str, range_: str | None, now: float) -> bool:
        """A bounce: the cache server sent the client back (object gone there) and we keep sending it
        to the cache. Bounces repeat within milliseconds, so `loop_repeats` redirects of the same
        bytes to the same client inside `loop_window` seconds end redirects for that pair a while;
        people downloading the same file twice in a row are far slower than that."""
        pair = (client, key)
        until = self._suppressed.get(pair)
        if until is not None:
            if now < until:
                return True
            del self._suppressed[pair]
        recent = self._recent.get(pair)
        if recent is None or recent[1] != range_ or now - recent[0] > self.loop_window:
            return False
        if recent[2] + 1 >= self.loop_repeats:
            self._suppressed[pair] = now + self.suppress_for
            _trim(self._suppressed, self.max_recent)
            return True
        return False

    def _remember(self, client: str, key: str, range_: str | None, now: float) -> None:
        pair = (client, key)
        recent = self._recent.get(pair)
        same = recent is not None and recent[1] == range_ and now - recent[0] <= self.loop_window
        # (first redirect of the run, Range, redirects in the run)
        self._recent[pair] = (recent[0], range_, recent[2] + 1) if same else (now, range_, 1)
        self._recent.move_to_end(pair)
        _trim(self._recent, self.max_recent)


def location_name(url: str) -> str:
    """The request's own last path segment, decoded (object_url encodes it again), so clients that
    name the saved file after the URL get the original name."""
    name = unquote(path_of(url).rsplit("/", 1)[-1], errors="replace")
    return name if name not in ("", ".", "..") else "download"


def _trim(table: OrderedDict, limit: int) -> None:
    while len(table) > limit:
        table.popitem(last=False)
