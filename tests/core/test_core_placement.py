"""Weighted rendezvous placement: stable, minimal movement, weights respected."""

from __future__ import annotations

import random
from collections import Counter

from cachetap.core.placement import Member, members_from, owner, ranking

_RNG = random.Random(7)
KEYS = [f"{_RNG.getrandbits(128):032x}" for _ in range(20_000)]


def shares(members: list[Member]) -> Counter[str]:
    return Counter(owner(k, members) for k in KEYS)


def test_owner_is_stable_and_independent_of_member_order():
    members = [Member("a"), Member("b"), Member("c")]
    first = [owner(k, members) for k in KEYS[:2000]]
    assert [owner(k, list(reversed(members))) for k in KEYS[:2000]] == first
    assert [owner(k, members) for k in KEYS[:2000]] == first
    assert set(first) == {"a", "b", "c"}


def test_a_joining_node_takes_only_its_share():
    before = [Member("a", 2.0), Member("b", 1.0), Member("c", 1.0)]
    after = [*before, Member("d", 1.0)]
    moved = [k for k in KEYS if owner(k, before) != owner(k, after)]
    assert all(owner(k, after) == "d" for k in moved)  # nothing moves between the old nodes
    assert abs(len(moved) / len(KEYS) - 1 / 5) < 0.02   # d's weight share: 1 of 5


def test_weights_are_respected():
    counts = shares([Member("big", 3.0), Member("small", 1.0)])
    assert abs(counts["big"] / len(KEYS) - 0.75) < 0.02


def test_a_dead_nodes_keys_spread_over_the_rest_by_weight():
    alive = [Member("a", 1.0), Member("b", 3.0)]
    everyone = [*alive, Member("dead", 2.0)]
    orphans = [k for k in KEYS if owner(k, everyone) == "dead"]
    orphaned = set(orphans)
    assert all(owner(k, alive) == owner(k, everyone) for k in KEYS if k not in orphaned)
    heirs = Counter(owner(k, alive) for k in orphans)
    assert abs(heirs["b"] / len(orphans) - 0.75) < 0.04
    # the heir is the runner-up of the full ranking
    assert all(ranking(k, everyone)[1] == owner(k, alive) for k in orphans[:500])


def test_no_members_no_owner_and_capacity_weights():
    assert owner(KEYS[0], []) is None
    assert owner(KEYS[0], [Member("a", 0.0)]) is None
    members = members_from({"a": 4 << 40, "b": 0, "c": 2 << 40})
    assert [(m.name, m.weight) for m in members] == [("a", float(4 << 40)), ("b", float(2 << 40)),
                                                     ("c", float(2 << 40))]
    assert members_from({}) == []
