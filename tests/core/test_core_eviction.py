"""core.eviction: the cleanup rule, quota victim order and the byte budget."""

from __future__ import annotations

import random

import pytest

from cachetap.core.eviction import EntryStat, bytes_budget, cleanup_victims, quota_victims
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


# ---- quota ---------------------------------------------------------------------------------------

def test_quota_within_budget_evicts_nothing():
    assert quota_victims([e("a"), e("b")], used_bytes=200, quota_bytes=200) == []


def test_quota_least_recently_hit_first_until_it_fits():
    entries = [e("new", last_hit=NOW), e("old", last_hit=NOW - 100), e("mid", last_hit=NOW - 50)]
    assert keys(quota_victims(entries, used_bytes=300, quota_bytes=150)) == ["old", "mid"]
    assert keys(quota_victims(entries, used_bytes=300, quota_bytes=200)) == ["old"]
    assert all(v.reason == "quota" for v in quota_victims(entries, 300, 0))


def test_quota_ties_by_fewer_hits_then_older_published_then_key():
    entries = [
        e("b_many_hits", hits=9, published=1.0),
        e("c_newer", hits=1, published=5.0),
        e("a_older", hits=1, published=2.0),
        e("z_same", hits=1, published=2.0),
    ]
    assert keys(quota_victims(entries, used_bytes=400, quota_bytes=0)) == ["a_older", "z_same", "c_newer",
                                                                           "b_many_hits"]


def test_quota_never_touches_non_ready_or_empty_entries():
    entries = [e("dl", last_hit=0.0, state="downloading"), e("q", last_hit=0.0, state="queued"),
               e("nosize", last_hit=0.0, size=None), e("ready", last_hit=NOW)]
    assert keys(quota_victims(entries, used_bytes=10_000, quota_bytes=0)) == ["ready"]


def test_quota_big_victim_can_free_enough_alone():
    entries = [e("small", last_hit=NOW - 10, size=10), e("big", last_hit=NOW - 5, size=1000)]
    assert keys(quota_victims(entries, used_bytes=1010, quota_bytes=500)) == ["small", "big"]


def test_quota_order_matches_a_model_on_random_entries():
    rng = random.Random(7)
    entries = [e(f"k{i:03d}", hits=rng.randint(0, 3), last_hit=float(rng.randint(0, 5)), size=rng.randint(1, 50),
                 published=float(rng.randint(0, 3))) for i in range(200)]
    used = sum(x.stored_size for x in entries)
    quota = used // 3
    victims = keys(quota_victims(entries, used, quota))
    order = sorted(entries, key=lambda x: (x.last_hit, x.hits, x.published_at, x.key))
    assert victims == [x.key for x in order[:len(victims)]]
    sizes = {x.key: x.stored_size for x in entries}
    freed = sum(sizes[k] for k in victims)
    assert used - freed <= quota < used - freed + sizes[victims[-1]]  # minimal prefix


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
