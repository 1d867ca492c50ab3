"""The catalog as policy storage: every policy decides exactly as it does over the in-memory store."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from cachetap.core.lifecycle import EntryState
from cachetap.core.policy import POLICIES, make_policy
from cachetap.core.policy.base import Record
from cachetap.core.policy.memory import MemoryStore
from cachetap.store.db import make_engine, upgrade
from cachetap.store.policy_store import CatalogPolicyStore


@pytest.fixture
def store(catalog_url):
    upgrade(catalog_url)
    engine = make_engine(catalog_url)
    yield CatalogPolicyStore(engine)
    engine.dispose()


def request(policy, events: list[str], key: str, size: int, now: float) -> None:
    """One request as the workers make it (one transaction); admissions and evictions go to `events`."""
    with getattr(policy.store, "transaction", _nothing)():
        if policy.resident(key):
            policy.hit(key, now)
            return
        policy.miss(key, size, now)
        if policy.admit(key, size, now):
            events += [f"+{key[-2:]}"] + [f"-{v[-2:]}" for v in policy.insert(key, size, now)]


def play(policy, steps: int = 400) -> list[str]:
    rng = random.Random(11)
    events: list[str] = []
    for step in range(steps):
        n = int(rng.paretovariate(0.9)) % 60
        request(policy, events, f"{n:032x}", 5 + n * 3, 1_000.0 + step * 97.0)
    return events


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_same_decisions_as_memory(store, name):
    expected = play(make_policy(name, MemoryStore(), 400))
    policy = make_policy(name, store, 400)
    assert play(policy) == expected
    assert any(e.startswith("-") for e in expected)   # evictions happened
    assert 0 < policy.used <= 400


def play_bursts(policy) -> list[str]:
    """Images pulled in bursts, then steady traffic: the LRFU evicts the images whose burst is over
    (through `oldest`) before the steady objects."""
    events: list[str] = []
    for i in range(60):
        request(policy, events, f"{i % 3:032x}", 60, i * 60.0)   # three images, twenty requests each
    for step in range(200):   # twelve steady objects for two days
        request(policy, events, f"{10 + step % 12:032x}", 20, 86_400.0 + step * 900.0)
    return events


def test_ended_bursts_leave_first_as_in_memory(store):
    expected = play_bursts(make_policy("lrfu", MemoryStore(), 400))
    assert play_bursts(make_policy("lrfu", store, 400)) == expected
    # An image went before any steady object was pushed out twice (without the rule: after).
    first_image_out = min(expected.index(e) for e in ("-00", "-01", "-02") if e in expected)
    assert all(expected[:first_image_out].count(f"-{10 + i:02x}") <= 1 for i in range(12))


def test_records_values_and_order(store):
    with store.transaction():
        for i, priority in enumerate([5.0, 1.0, 3.0]):
            store.put(f"{i:032x}", Record(size=10 + i, priority=priority, last=10.0 - i))
        store.put(f"{1:032x}", Record(size=11, priority=9.0, last=20.0))   # moved, requested since
        store.remove(f"{2:032x}")
        store.set_value("used", 21.0)
    assert [k[-1] for k, _ in store.lowest("main", 5)] == ["0", "1"]
    assert store.oldest("main")[0][-1] == "0" and store.oldest("ghost") is None
    assert store.get(f"{0:032x}") == Record(size=10, priority=5.0, last=10.0)
    assert store.get("f" * 32) is None
    assert store.value("used") == 21.0 and store.value("missing") == 0.0
    store.rescale(2.0)
    assert store.get(f"{1:032x}").priority == -2.0   # last + (priority - last) x 2


def test_upgrade_gives_objects_stored_before_it_a_place_in_the_policy(catalog_url):
    from cachetap.core.keys import cache_key

    upgrade(catalog_url, "0002_secrets")
    engine = make_engine(catalog_url)
    try:
        # Rows as the code of revision 0002 wrote them (today's Catalog writes columns added since):
        # both seen three times, the first one stored.
        old = sa.table("entries", *(sa.column(name) for name in (
            "key", "url", "host", "filename", "state", "hits", "first_seen", "last_hit", "blob", "stored_size",
            "published_at", "created_at", "updated_at")))
        keys = []
        with engine.begin() as conn:
            for name in ("a", "b"):
                url = f"http://files.test/{name}.iso"
                keys.append(cache_key(url, {}))
                conn.execute(sa.insert(old).values(
                    key=keys[-1], url=url, host="files.test", filename=f"{name}.iso",
                    state=EntryState.COUNTING.value, hits=3, first_seen=1.0, last_hit=1.0, created_at=1.0,
                    updated_at=1.0))
            conn.execute(sa.update(old).where(old.c.key == keys[0]).values(
                state=EntryState.READY.value, blob="ab" * 32, stored_size=700, published_at=2.0))
        upgrade(catalog_url)
        store = CatalogPolicyStore(engine)
        assert store.get(keys[0]) == Record(size=700, queue="main", priority=0.0, freq=3.0, last=0.0)
        assert store.get(keys[1]) is None   # not stored: nothing to place
        assert store.value("used") == 700.0
        policy = make_policy("lru", store, 1000)
        with store.transaction():
            assert policy.insert("c" * 32, 500, 5.0) == [keys[0]]
    finally:
        engine.dispose()
