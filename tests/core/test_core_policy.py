"""Cache policies over the in-memory store: byte accounting, victim order, admission, shared state."""

from __future__ import annotations

import random

import pytest

from cachetap.core.policy import GHOST, POLICIES, make_policy
from cachetap.core.policy.base import USED
from cachetap.core.policy.gdsf import INFLATION
from cachetap.core.policy.memory import MemoryHits, MemoryStore


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="lru"):
        make_policy("nope", MemoryStore(), 10)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_never_exceeds_capacity_and_accounts_bytes(name):
    policy = make_policy(name, MemoryStore(), 1000)
    rng = random.Random(5)
    resident: dict[str, int] = {}
    for step in range(3000):
        key = f"k{int(rng.paretovariate(0.8)) % 300}"
        size = 1 + (hash(key) % 7) * 40
        if policy.resident(key):
            policy.hit(key, step)
            continue
        policy.miss(key, size, step)
        if policy.admit(key, size, step):
            for victim in policy.insert(key, size, step):
                resident.pop(victim)
            resident[key] = size
        assert policy.used <= 1000
        assert policy.used == sum(resident.values())
    assert all(policy.resident(k) for k in resident)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_remove_releases_reserved_bytes(name):
    policy = make_policy(name, MemoryStore(), 100)
    assert policy.insert("a", 60, 0.0) == []
    assert policy.used == 60
    assert policy.remove("a") is True
    assert policy.used == 0 and not policy.resident("a")
    assert policy.remove("a") is False


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_object_larger_than_the_cache_is_refused(name):
    policy = make_policy(name, MemoryStore(), 100)
    assert policy.admit("big", 101, 0.0) is False
    assert policy.admit("zero", 0, 0.0) is False


def test_lru_evicts_least_recently_requested_first():
    policy = make_policy("lru", MemoryStore(), 30)
    for t, key in enumerate("abc"):
        policy.insert(key, 10, float(t))
    policy.hit("a", 5.0)
    assert policy.insert("d", 10, 6.0) == ["b"]
    assert policy.insert("e", 20, 7.0) == ["c", "a"]


def test_gdsf_prefers_small_frequent_objects_and_raises_inflation():
    store = MemoryStore()
    policy = make_policy("gdsf", store, 100)
    policy.insert("big", 60, 0.0)
    policy.insert("small", 10, 1.0)
    policy.hit("small", 2.0)
    assert policy.insert("new", 40, 3.0) == ["big"]
    assert store.value(INFLATION) == pytest.approx(1 / 60)


def test_s3fifo_one_hit_wonders_leave_through_the_small_queue():
    store = MemoryStore()
    policy = make_policy("s3fifo", store, 100)
    policy.insert("hot", 10, 0.0)
    policy.hit("hot", 1.0)
    for i in range(20):   # a scan of objects never requested again
        policy.insert(f"scan{i}", 10, 2.0 + i)
    assert policy.resident("hot")
    assert store.get("scan5").queue == GHOST and store.get("scan0") is None   # ghosts: as many bytes as the cache
    policy.insert("scan5", 10, 30.0)   # a ghost that comes back goes to the main queue
    assert store.get("scan5").queue == "main"


def test_lrfu_keeps_the_frequent_object_through_a_scan_and_forgets_with_time():
    store = MemoryStore()
    policy = make_policy("lrfu", store, 100)
    policy.miss("hot", 10, 0.0)
    policy.insert("hot", 10, 0.0)
    for t in range(1, 6):
        policy.hit("hot", float(t))
    for i in range(30):
        policy.miss(f"s{i}", 10, 10.0 + i)
        policy.insert(f"s{i}", 10, 10.0 + i)
    assert policy.resident("hot")
    # A month later its score has halved many times: newer objects win.
    later = 30 * 86_400.0
    for i in range(12):
        key = f"n{i}"
        policy.miss(key, 10, later + i)
        policy.hit(key, later + i)
        policy.insert(key, 10, later + i)
        policy.hit(key, later + i + 0.5)
    assert not policy.resident("hot")


def _burst_and_steady(policy, steady_gap: float) -> None:
    """An 'image' pulled 40 times in an hour, then steady objects requested every `steady_gap`
    seconds for two days, then one more object that needs room."""
    policy.miss("image", 40, 0.0)
    policy.insert("image", 40, 0.0)
    for i in range(1, 40):
        policy.hit("image", i * 90.0)
    steady = [f"steady{i}" for i in range(5)]
    for key in steady:
        policy.miss(key, 10, 3600.0)
        policy.hit(key, 3600.0)   # history: straight to the main queue
        policy.insert(key, 10, 3600.0)
    now = 3600.0
    while now < 2 * 86_400.0:
        now += steady_gap
        for key in steady:
            policy.hit(key, now)
    policy.miss("new", 10, now)
    policy.hit("new", now)
    policy.insert("new", 10, now)


def test_lrfu_evicts_a_burst_that_has_ended_before_steady_objects():
    from cachetap.core.policy.lrfu import LRFU
    # Its 40 requests outscore the steady objects' decayed ones, but the burst is two days over.
    policy = LRFU(MemoryStore(), 95, half_life=48 * 3600.0)
    _burst_and_steady(policy, steady_gap=6 * 3600.0)
    assert not policy.resident("image")
    assert all(policy.resident(f"steady{i}") for i in range(5))


def test_lrfu_keeps_an_object_idle_for_less_than_its_gaps():
    from cachetap.core.policy.lrfu import LRFU
    # The same requests with the 'image' requested just before: no burst has ended, the score rules
    # and the least requested steady object goes.
    policy = LRFU(MemoryStore(), 95, half_life=48 * 3600.0)
    _burst_and_steady(policy, steady_gap=6 * 3600.0)
    fresh = LRFU(MemoryStore(), 95, half_life=48 * 3600.0)
    fresh.miss("image", 40, 0.0)
    fresh.insert("image", 40, 0.0)
    for i in range(1, 40):
        fresh.hit("image", 2 * 86_400.0 - 3600.0 + i * 60.0)
    for i in range(5):
        fresh.miss(f"s{i}", 10, 100.0 + i)
        fresh.hit(f"s{i}", 100.0 + i)
        fresh.insert(f"s{i}", 10, 100.0 + i)
    fresh.miss("new", 10, 2 * 86_400.0)
    fresh.insert("new", 10, 2 * 86_400.0)
    assert fresh.resident("image")


def test_memory_store_oldest_is_the_least_recently_requested_live_record():
    from cachetap.core.policy.base import Record
    rng = random.Random(5)
    store = MemoryStore()
    assert store.oldest("main") is None
    for step in range(3000):
        key = f"k{rng.randrange(200)}"
        if rng.random() < 0.1:
            store.remove(key)
        else:
            last = float(step if rng.random() < 0.8 else rng.randrange(step + 1))
            store.put(key, Record(size=1, queue=rng.choice("ab"), priority=rng.random(), last=last))
        if step % 89 == 0:
            for queue in "ab":
                live = [(r.last, k) for k, r in store.records.items() if r.queue == queue]
                found = store.oldest(queue)
                assert (found is None) == (not live)
                if found:
                    assert (found[1].last, found[0]) == min(live) and store.get(found[0]) is found[1]
    assert sum(map(len, store._by_last["a"])) <= 2 * len(store.records) + 64   # stale items do not pile up


def test_memory_store_lowest_skips_stale_heap_items():
    store = MemoryStore()
    from cachetap.core.policy.base import Record
    for i in range(10):
        store.put(f"k{i}", Record(size=1, priority=float(i)))
    store.put("k0", Record(size=1, priority=100.0))   # re-prioritised
    store.remove("k1")
    assert [k for k, _ in store.lowest("main", 3)] == ["k2", "k3", "k4"]
    assert store.lowest("other", 2) == []
    store.set_value(USED, 5.0)
    assert store.value(USED) == 5.0 and store.value("unset") == 0.0


def test_memory_store_lowest_is_the_order_of_its_live_records():
    # Priorities put in order go to a sorted run, the others to a heap: the order must be one.
    from cachetap.core.policy.base import Record
    rng = random.Random(7)
    store = MemoryStore()
    for step in range(4000):
        key = f"k{rng.randrange(300)}"
        if rng.random() < 0.1:
            store.remove(key)
        else:
            ahead = rng.random() < 0.7   # mostly ascending, as request times are
            priority = float(step if ahead else rng.randrange(step + 1)) // 3   # // 3: ties
            store.put(key, Record(size=1, queue=rng.choice("ab"), priority=priority))
        if step % 97 == 0:
            for queue in "ab":
                want = sorted(r.priority for r in store.records.values() if r.queue == queue)
                got = store.lowest(queue, 5)
                assert [r.priority for _k, r in got] == want[:5]
                assert all(store.get(k) is r and r.queue == queue for k, r in got)
                assert [k for k, _ in store.lowest(queue, 1)] == [k for k, _ in got[:1]]


def test_lrfu_window_grows_when_newcomers_come_back_and_shrinks_when_main_victims_do():
    from cachetap.core.policy.lrfu import LRFU, WINDOW_SHARE, WINDOW_TARGET
    policy, t = LRFU(MemoryStore(), 1000, half_life=3600.0), 0.0

    def request(key: str) -> None:
        nonlocal t
        t += 1.0
        if policy.resident(key):
            policy.hit(key, t)
        else:
            policy.miss(key, 10, t)
            policy.insert(key, 10, t)

    def target() -> float:
        return policy.store.value(WINDOW_TARGET)

    for i in range(100):   # a full main queue, each admitted on its second request
        policy.miss(f"m{i}", 10, t)
        request(f"m{i}")
    # Each second request was a newcomer's history wanted again: the window grew, to 5% at most.
    assert target() == WINDOW_SHARE
    request("c")
    for newcomer in ("d", "e", "f"):
        request(newcomer)
    assert policy.resident("c")   # the window keeps newcomers a while
    gone = [f"m{i}" for i in range(100) if not policy.resident(f"m{i}")]
    assert len(gone) >= 4 and all(policy.store.get(k).freq >= 2 for k in gone)
    # Evicted from the main queue and wanted again: a larger main queue would have kept them.
    request(gone[0])
    assert target() == pytest.approx(WINDOW_SHARE - 10 / 1000)
    for key in gone[1:]:
        request(key)
    for round_ in range(2):   # two more, once the newcomers have pushed another out of the main queue
        newcomer = 0
        while all(policy.resident(f"m{i}") for i in range(100)):
            request(f"p{round_}.{newcomer}")
            newcomer += 1
        request(next(f"m{i}" for i in range(100) if not policy.resident(f"m{i}")))
    assert target() == 0.0   # never less
    request("g")
    request("h")
    assert not policy.resident("g")   # no window: the newcomer before leaves at once
    request("g")
    assert target() == pytest.approx(10 / 1000)


def test_lrfu_replay_is_miss_admit_insert_in_one_call():
    from cachetap.core.policy.lrfu import LRFU
    rng = random.Random(11)
    one, steps = LRFU(MemoryStore(), 500, 3600.0), LRFU(MemoryStore(), 500, 3600.0)
    for t in range(3000):
        key, size, now = f"k{int(rng.paretovariate(0.7)) % 200}", rng.randrange(1, 120), t * 60.0
        if steps.resident(key):
            steps.hit(key, now)
            assert one.replay(key, size, now) is True
            continue
        steps.miss(key, size, now)
        if steps.admit(key, size, now):
            steps.insert(key, size, now)
        assert one.replay(key, size, now) is False
    assert one.store.records == steps.store.records
    assert {k: v for k, v in one.store.values.items() if v} == {k: v for k, v in steps.store.values.items() if v}


def test_memory_hits_count_within_the_window():
    hits = MemoryHits(window=10.0)
    assert [hits.record("a", t) for t in (0.0, 1.0, 5.0)] == [1, 2, 3]
    assert hits.record("a", 10.5) == 3   # the request at 0 fell out of the window
    assert hits.record("b", 10.5) == 1


def _play(policy, requests):
    hits = 0
    for now, key, size in requests:
        if policy.resident(key):
            policy.hit(key, now)
            hits += size
            continue
        policy.miss(key, size, now)
        if policy.admit(key, size, now):
            policy.insert(key, size, now)
    return hits


def test_adaptive_lrfu_shortens_its_half_life_when_popularity_fades_fast():
    from cachetap.core.policy.lrfu import HALF_LIFE
    rng = random.Random(3)
    requests = []
    for wave in range(40):   # every 6 hours a new set of files is hot, then never asked again
        start = wave * 6 * 3600.0
        requests += sorted((start + rng.uniform(0, 6 * 3600), f"w{wave}-{rng.randrange(5)}", 10) for _ in range(60))
    store = MemoryStore()
    policy = make_policy("lrfu", store, 60)
    _play(policy, requests)
    assert store.value(HALF_LIFE) <= 12 * 3600
    # a fixed long half-life keeps yesterday's hot files and earns less
    from cachetap.core.policy.lrfu import LRFU
    assert _play(LRFU(MemoryStore(), 60, 192 * 3600.0), requests) < _play(make_policy("lrfu", MemoryStore(), 60), requests)


def test_adaptive_lrfu_weighs_the_miniatures_earnings_by_time_not_by_request_count():
    from cachetap.core.policy.lrfu import AdaptiveLRFU
    policy = AdaptiveLRFU(MemoryStore(), 100)
    _play(policy, [(0.0, "a", 10), (1.0, "a", 10)])   # every miniature earns the hit on "a"
    assert policy.earned == [10.0] * len(policy.candidates)
    # a thousand requests within a minute: a busy hour does not erase what the quiet ones earned
    _play(policy, [(2.0 + i / 20, f"new{i}", 1) for i in range(1000)])
    assert all(e > 9.99 for e in policy.earned)
    # one memory later the earnings count half
    _play(policy, [(1.0 + policy.memory, "b", 1)])
    assert all(abs(e - 5.0) < 0.01 for e in policy.earned)


def test_rescale_keeps_order_relative_to_last_request():
    from cachetap.core.policy.base import Record
    store = MemoryStore()
    store.put("a", Record(size=1, priority=110.0, last=100.0))
    store.put("b", Record(size=1, priority=105.0, last=50.0))
    store.rescale(10.0)
    assert store.get("a").priority == 200.0 and store.get("b").priority == 600.0
    assert [k for k, _ in store.lowest("main", 2)] == ["a", "b"]


def test_adaptive_lrfu_miniatures_remember_a_bounded_sample_of_keys():
    from cachetap.core.policy.lrfu import HASH_SPACE, AdaptiveLRFU
    rng = random.Random(5)
    policy = AdaptiveLRFU(MemoryStore(), 50_000)
    policy.max_sampled = 100
    requests = [(float(t), f"k{rng.randrange(8_000)}", rng.randrange(1, 200)) for t in range(10_000)]
    _play(policy, requests)
    assert policy.threshold < HASH_SPACE / 10            # the sample shrank as keys arrived
    assert len(policy.sampled) <= 100
    for mini in policy.minis:
        assert set(mini.store.records) <= set(policy.sampled)
        assert mini.capacity < 50_000 / 10 and mini.used <= mini.capacity
    # the miniatures still earn hits on what they sample
    assert max(policy.earned) > 0
