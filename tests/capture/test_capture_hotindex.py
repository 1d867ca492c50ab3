"""HotIndex: the ready-key set of the capture process, checked against a plain set as the model."""

from __future__ import annotations

import random
import threading

import pytest

from cachetap.capture.hotindex import MIN_CAPACITY, BadKey, HotIndex


def key(n: int, tail: int = 0) -> str:
    """A well-formed key whose 64-bit prefix is `n` (so tests can aim at slots)."""
    return f"{n:016x}{tail:016x}"


def random_keys(rng: random.Random, count: int) -> list[str]:
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


def test_add_contains_remove():
    index = HotIndex()
    k = key(0xDEADBEEF12345678, 1)
    assert not index.contains(k) and len(index) == 0
    assert index.add(k) is True and index.add(k) is False
    assert index.contains(k) and k in index and len(index) == 1
    assert index.remove(k) is True and index.remove(k) is False
    assert not index.contains(k) and len(index) == 0


@pytest.mark.parametrize("bad", ["", "0" * 31, "0" * 33, "0123456789ABCDEF0123456789abcdef",
                                 "0123456789abcdeg0123456789abcdef", " 123456789abcdef0123456789abcdef",
                                 "+123456789abcdef0123456789abcdef", "0x23456789abcdef0123456789abcdef",
                                 "0_23456789abcdef0123456789abcdef", "\u0663" * 32, "0123456789abcdef0123456789abcde\n"])
def test_malformed_keys_are_refused_by_writers_and_absent_for_readers(bad):
    index = HotIndex([key(7)])
    with pytest.raises(BadKey):
        index.add(bad)
    with pytest.raises(BadKey):
        index.remove(bad)
    assert index.contains(bad) is False and (bad in index) is False
    assert len(index) == 1


def test_non_strings():
    index = HotIndex([key(7)])
    assert 7 not in index and None not in index
    with pytest.raises(BadKey):
        index.add(7)  # type: ignore[arg-type]


def test_prefixes_that_equal_the_slot_markers_are_stored():
    index = HotIndex()
    zero, one = key(0, 5), key(1, 5)
    index.add(zero)
    assert index.contains(zero) and not index.contains(one)
    index.add(one)
    index.remove(zero)
    assert index.contains(one) and not index.contains(zero)


def test_keys_are_matched_on_their_64_bit_prefix():
    index = HotIndex([key(42, 1)])
    assert index.contains(key(42, 2))   # same prefix: accepted by design (see the module docstring)
    assert not index.contains(key(43, 1))


def test_long_probe_chains_with_deletions_in_the_middle():
    # All prefixes land on the same slot: the worst case for linear probing and DELETED markers.
    same_slot = [key(5 + i * MIN_CAPACITY * 64) for i in range(200)]
    index = HotIndex(same_slot)
    for k in same_slot[::2]:
        assert index.remove(k)
    for i, k in enumerate(same_slot):
        assert index.contains(k) == (i % 2 == 1)
    for k in same_slot[::4]:
        assert index.add(k)
    assert len(index) == 150
    assert all(index.contains(k) for k in same_slot[1::2] + same_slot[::4])


def test_random_operations_match_a_set_through_growth_and_purges():
    rng = random.Random(1234)
    pool = random_keys(rng, 3000)
    index, model = HotIndex(), set()
    capacities = set()
    for step in range(40_000):
        k = rng.choice(pool)
        if rng.random() < 0.55:
            assert index.add(k) == (k not in model)
            model.add(k)
        else:
            assert index.remove(k) == (k in model)
            model.discard(k)
        capacities.add(index.capacity)
        if step % 997 == 0:
            assert len(index) == len(model)
            assert all(index.contains(p) == (p in model) for p in pool)
    assert len(capacities) > 1  # it grew at least once
    assert all(index.contains(p) == (p in model) for p in pool)


def test_replace_all_swaps_contents_and_refuses_bad_input_atomically():
    rng = random.Random(7)
    old, new = random_keys(rng, 2000), random_keys(rng, 3000)
    index = HotIndex(old)
    assert index.replace_all(k for k in new) == 3000        # a generator (unsized) grows as it goes
    assert all(index.contains(k) for k in new) and not any(index.contains(k) for k in old)
    with pytest.raises(BadKey):
        index.replace_all(old + ["not-a-key"])
    assert len(index) == 3000 and all(index.contains(k) for k in new)
    assert index.replace_all([]) == 0 and not index.contains(new[0])
    assert index.replace_all(new + new) == 3000              # duplicates counted once


def test_one_writer_and_a_reader_thread_agree():
    rng = random.Random(99)
    stable, never, churn = random_keys(rng, 500), random_keys(rng, 500), random_keys(rng, 5000)
    index = HotIndex(stable)
    done = threading.Event()
    wrong: list[str] = []

    def reader() -> None:
        while not done.is_set():
            for k in stable:
                if not index.contains(k):
                    wrong.append(k)
            for k in never:
                if index.contains(k):
                    wrong.append(k)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(3):  # adds that force resizes, removes that leave DELETED markers, a swap
            for k in churn:
                index.add(k)
            for k in churn:
                index.remove(k)
            index.replace_all(stable + churn[:round_ * 1000])
    finally:
        done.set()
        thread.join(timeout=60)
    assert not wrong


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_one_million_keys_stay_well_under_60_mb():
    before = _rss_bytes()
    index = HotIndex(f"{(i * 0x9E3779B97F4A7C15) & (2**64 - 1):016x}{i:016x}" for i in range(1_000_000))
    grown = _rss_bytes() - before
    assert len(index) == 1_000_000
    assert index.table_bytes() == 26 << 20  # 8-byte prefix + 4-byte expiry + 1-byte node per slot
    assert grown < 60 << 20, f"RSS grew by {grown >> 20} MiB"
    assert index.contains(f"{(77 * 0x9E3779B97F4A7C15) & (2**64 - 1):016x}{77:016x}")


def test_a_key_is_redirectable_only_until_its_expiry():
    key = "ab" * 16
    index = HotIndex()
    index.add(key, expires=1000.5)
    assert index.contains(key, now=999.0)
    assert not index.contains(key, now=1000.0)  # floored: never held beyond its deadline
    assert index.expires(key) == 1000.0
    assert index.add(key, expires=5000) is False  # a revalidation extends the deadline in place
    assert index.contains(key, now=4000)
    index.add(key)  # no deadline
    assert index.contains(key, now=2.0**40) and index.expires(key) is None


def test_expiries_survive_a_reconcile_and_a_resize():
    def k_(i: int) -> str:
        return f"{(i * 0x9E3779B97F4A7C15) & (2**64 - 1):016x}{i:016x}"

    keys = [k_(i) for i in range(1, 3001)]
    index = HotIndex((k, 100.0 + i) for i, k in enumerate(keys))
    for k in [k_(i) for i in range(3001, 6001)]:
        index.add(k, expires=50.0)  # grows the table several times
    assert index.contains(keys[10], now=105.0) and not index.contains(keys[10], now=111.0)
    assert index.expires(keys[2999]) == 3099.0
    assert index.contains(k_(4000), now=49.0) and not index.contains(k_(4000), now=60.0)


def test_each_key_carries_its_holder_node_through_updates_and_resizes():
    keys = [f"{i * 7919 + 100:016x}{i:016x}" for i in range(3000)]  # distinct 64-bit prefixes
    index = HotIndex()
    for i, k in enumerate(keys):
        index.add(k, None, i % 5)  # grows several times on the way
    assert [index.lookup(k) for k in keys] == [i % 5 for i in range(3000)]
    index.add(keys[0], None, 9)  # moved to another node in place
    assert index.lookup(keys[0]) == 9
    index.replace_all([(keys[1], None, 3), (keys[2], 5000.0, 4), keys[3]])
    assert [index.lookup(k, now=100.0) for k in keys[:5]] == [-1, 3, 4, 0, -1]
    assert index.lookup(keys[2], now=6000.0) == -1  # stale
    with pytest.raises(ValueError):
        index.add(keys[0], None, 256)
