"""Which cache node owns a key: weighted rendezvous hashing (highest random weight).

Every node gets a score per key from a hash of (key, node name); the highest score owns the key. Adding a node
moves only the keys it now wins (its share), removing one moves only its own keys, each to its
runner-up, so they spread over the rest in proportion to their weights. This is Squid's CARP and
Varnish's shard director; the weighted score `-weight / ln(u)` (Schindelhauer and Schomaker's
logarithmic method) gives each node a share exactly proportional to its weight, which CARP's
multiplicative weights only approximate.

Hand-written rather than a library: core/ is stdlib only and this is twenty lines; ketama rings
(uhashring) need virtual points per weight unit and move more than the joining node's share when
weights are uneven. Not on the capture's hot path: placement decides where a download goes; the
capture redirects to whichever node the catalog says holds the object.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Member:
    """A live cache node and its weight (its disks' capacity; only ratios matter)."""

    name: str
    weight: float = 1.0


def members_from(capacities: Mapping[str, int | float]) -> list[Member]:
    """Members weighted by capacity; a node that reported no capacity counts as the smallest one
    (it still takes a share, so a node with unreadable disks is not silently left out)."""
    known = [c for c in capacities.values() if c > 0]
    floor = min(known) if known else 1.0
    return [Member(name, float(c) if c > 0 else float(floor)) for name, c in sorted(capacities.items())]


def score(key: str, member: Member) -> float:
    """The member's weighted score for `key`: -weight / ln(u), u uniform in (0, 1) from the hash."""
    digest = hashlib.blake2b(f"{member.name}\0{key}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / _SCALE  # never 0 or 1
    return -member.weight / math.log(u)


def ranking(key: str, members: Iterable[Member]) -> list[str]:
    """Node names by preference for `key`: the owner first, then who would own it if the ones
    before were gone (where an object may still be after the set of nodes changed)."""
    scored = [(score(key, m), m.name) for m in members if m.weight > 0]
    scored.sort(reverse=True)
    return [name for _, name in scored]


def owner(key: str, members: Iterable[Member]) -> str | None:
    """The node that owns `key`, or None when there is no member with a positive weight."""
    best, best_name = -1.0, None
    for m in members:
        if m.weight <= 0:
            continue
        s = score(key, m)
        if s > best or (s == best and best_name is not None and m.name > best_name):
            best, best_name = s, m.name
    return best_name
