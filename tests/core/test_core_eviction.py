"""core.eviction: the cleanup rule, quota victim order and the byte budget."""

from __future__ import annotations

import random

import pytest

from cachetap.core.eviction import EntryStat, bytes_budget, cleanup_victims
from cachetap.core.types import Evict

NOW = 1_000_000.0
DAY = 86_400.0


def e(key: str, hits: int = 1, last_hit: float = NOW, size: int | None = 100, published: float | None = 0.0,
      state: str = "ready") -> EntryStat:
    return EntryStat(key=key, hits=hits, last_hit=last_hit, stored_size=size, published_at=published,
                     blob=None, state=state)


def keys(victims: list[Evict]) -> list[str]:
    return [v.key for v in victims]


# ---- cleanup -------------------------------------------------------------------------------------

def test_cleanup_needs_both_few_hits_and_idle():
    entries = [
        e("cold", hits=1, last_hit=NOW - 8 * DAY),
        e("popular_but_idle", hits=5, last_hit=NOW - 30 * DAY),
        e("few_but_recent", hits=1, last_hit=NOW - DAY),
        e("boundary", hits=2, last_hit=NOW - 7 * DAY),      # exactly idle, fewer than 3
        e("hits_at_limit", hits=3, last_hit=NOW - 30 * DAY),  # not fewer than 3
    ]
    victims = cleanup_victims(entries, NOW, min_hits=3, idle=7 * DAY)
    assert keys(victims) == ["cold", "boundary"]
    assert all(v == Evict(v.key, "cold") for v in victims)


def test_cleanup_skips_claimed_entries_and_takes_rows_at_rest():
    old = NOW - 100 * DAY
    entries = [e(s, hits=0, last_hit=old, state=s) for s in
               ("counting", "probing", "queued", "downloading", "ready", "rejected", "failed")]
    assert sorted(keys(cleanup_victims(entries, NOW, 3, DAY))) == ["counting", "failed", "ready", "rejected"]


def test_cleanup_min_hits_zero_disables():
    assert cleanup_victims([e("a", hits=0, last_hit=0.0)], NOW, min_hits=0, idle=1) == []


# ---- budget --------------------------------------------------------------------------------------

@pytest.mark.parametrize("used,quota,free,min_free,expected", [
    (1000, 0, 10_000, 100, 1000),   # no quota, plenty free
    (1000, 600, 10_000, 100, 600),  # quota binds
    (1000, 0, 50, 100, 950),        # 50 bytes short of min_free
    (1000, 600, 50, 300, 600),      # quota stricter than the free-space rule
    (1000, 900, 50, 300, 750),      # free-space rule stricter
    (1000, 0, 0, 5000, 0),          # even evicting everything is not enough: evict everything
    (1000, 2000, 10_000, 0, 1000),  # under quota
])
def test_bytes_budget(used, quota, free, min_free, expected):
    assert bytes_budget(used, quota, free, min_free) == expected

