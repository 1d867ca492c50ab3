"""The virtual-clock simulation: admission, bypass downloads, freshness and cancelled downloads."""

from __future__ import annotations

from cachetap.core.policy import make_policy
from cachetap.core.policy.memory import MemoryStore
from cachetap.core.simulation import SimConfig, Simulation


def sim(capacity: int = 100, **config) -> Simulation:
    return Simulation(make_policy("lru", MemoryStore(), capacity), SimConfig(**config))


def test_threshold_and_instant_model():
    s = sim(admission_threshold=2)
    assert [s.request(t, "a", 10) for t in range(5)] == [False, False, False, True, True]
    r = s.finish(5)
    assert (r.downloads, r.origin_bytes_for_cache, r.bytes_hit, r.net_saved) == (1, 10, 20, 10)


def test_objects_outside_the_size_rules_are_never_admitted():
    s = sim(admission_threshold=0, min_size=5, max_size=50)
    assert not any(s.request(t, "tiny", 4) or s.request(t, "huge", 60) for t in range(3))
    assert s.finish(3).not_cacheable == 6


def test_stale_copy_waits_for_the_next_revalidation_pass():
    s = sim(admission_threshold=0, default_ttl=100, max_ttl=1000, revalidate_interval=80)
    s.request(0, "a", 10)
    assert s.request(99, "a", 10)
    assert not s.request(120, "a", 10)    # expired at 100, next pass at 160
    assert s.request(160, "a", 10)
    assert s.request(250, "a", 10)        # fresh again until 260
    assert not s.request(261, "a", 10)


def test_eviction_during_a_download_costs_only_what_was_fetched():
    s = sim(capacity=100, admission_threshold=0, download_rate=10.0)
    s.request(0, "a", 80)                 # ready at t=8
    s.request(2, "b", 80)                 # evicts a after 20 of its 80 bytes
    r = s.finish(2)
    assert r.downloads_cancelled == 1 and r.origin_bytes_for_cache == 20 + 80
    assert r.peak_disk == 80
