"""The entry lifecycle table: allowed moves, refused ones, the small decisions built on it, and that no
other module spells a state out."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

import cachetap
from cachetap.core import lifecycle
from cachetap.core.lifecycle import EntryState as S
from cachetap.core.lifecycle import Event as E
from cachetap.core.lifecycle import IllegalTransition, advance, claim_sources, duplicate_delivery, probe_event

WINDOW = 86_400.0


def test_the_happy_path_from_first_sighting_to_ready():
    state = S.COUNTING
    for event in (E.CLAIM, E.PROBE_ACCEPTED, E.START, E.PROGRESS, E.PUBLISH):
        state = advance(state, event)
    assert state == S.READY


@pytest.mark.parametrize("state, event", [
    (S.READY, E.CLAIM), (S.QUEUED, E.CLAIM), (S.DOWNLOADING, E.CLAIM),   # nothing to admit
    (S.COUNTING, E.PUBLISH), (S.QUEUED, E.PUBLISH), (S.PROBING, E.START),  # no skipping ahead
    (S.READY, E.START), (S.COUNTING, E.RELEASE), (S.READY, E.REQUEUE),
])
def test_moves_the_table_does_not_have_raise(state, event):
    with pytest.raises(IllegalTransition, match=str(event)):
        advance(state, event)


def test_an_unknown_state_from_the_database_raises_the_same_way():
    with pytest.raises(IllegalTransition):
        advance("paused", E.CLAIM)


def test_every_state_is_reachable_and_only_give_up_and_rehome_leave_ready():
    reached = {S.COUNTING} | set(lifecycle.TRANSITIONS.values())
    assert reached == set(S)
    assert {event for state, event in lifecycle.TRANSITIONS if state == S.READY} == {E.GIVE_UP, E.REHOME}
    assert advance(S.READY, E.REHOME) == S.QUEUED  # a download job for the key's owner node


def test_sources_name_what_reclaim_recovers():
    assert lifecycle.sources(E.RELEASE) == {S.PROBING}
    assert lifecycle.sources(E.REQUEUE) == lifecycle.LIVE_DOWNLOAD == {S.QUEUED, S.DOWNLOADING}


def test_state_groups_partition_as_eviction_expects():
    assert lifecycle.AT_REST | lifecycle.CLAIMED == set(S)
    assert not lifecycle.AT_REST & lifecycle.CLAIMED


@pytest.mark.parametrize("state, age, forced, expected", [
    (S.COUNTING, 0, False, (S.COUNTING,)),
    (S.PROBING, 0, False, (S.COUNTING,)),           # only a stale claim is retaken (by the catalog)
    (S.REJECTED, WINDOW - 1, False, None),           # a fresh verdict stands
    (S.REJECTED, WINDOW, False, (S.COUNTING, S.REJECTED)),
    (S.FAILED, 0, True, (S.COUNTING, S.FAILED)),     # an operator's prefetch asks again at once
    (S.QUEUED, WINDOW * 9, True, None),
    (S.DOWNLOADING, 0, False, None),
    (S.READY, 0, True, None),
])
def test_claim_sources(state, age, forced, expected):
    assert claim_sources(state, age, WINDOW, forced) == expected


def test_probe_outcomes():
    assert advance(S.PROBING, probe_event(failed=True, accepted=True)) == S.FAILED
    assert advance(S.PROBING, probe_event(failed=False, accepted=False)) == S.REJECTED
    assert advance(S.PROBING, probe_event(failed=False, accepted=True)) == S.QUEUED


@pytest.mark.parametrize("state, ours, expected", [
    (S.DOWNLOADING, True, "wait"),        # a duplicate delivery while the first worker is alive
    (S.DOWNLOADING, False, "obsolete"),   # reclaim gave the key a new claim
    (S.READY, True, "obsolete"),
    (S.QUEUED, True, "obsolete"),
    (None, False, "obsolete"),            # the row is gone
])
def test_duplicate_delivery(state, ours, expected):
    assert duplicate_delivery(state, ours) == expected


# Strings equal to a state name that are not entry states (path relative to the package, count).
NOT_STATES = {
    ("wire.py", "ready"): 1,              # the index event's wire name
    ("capture/pipeline.py", "rejected"): 1,  # malformed packets in the capture summary
    ("capture/replay.py", "queued"): 1,   # the batch sender's counters in the replay summary
}


def test_state_names_are_spelled_out_only_in_the_lifecycle_and_the_migrations():
    root = Path(cachetap.__file__).parent
    names = {state.value for state in S}
    found: Counter[tuple[str, str]] = Counter()
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).as_posix()
        if relative == "core/lifecycle.py" or relative.startswith("store/migrations/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found[(relative, node.value)] += 1
    assert dict(found) == NOT_STATES


def test_moves_names_each_start_state_and_raises_for_any_move_the_table_lacks():
    from cachetap.core.lifecycle import moves

    assert moves(E.START) == {S.QUEUED: S.DOWNLOADING,
                                  S.DOWNLOADING: S.DOWNLOADING}
    assert moves(E.REQUEUE, "downloading") == {S.DOWNLOADING: S.QUEUED}
    assert set(moves(E.GIVE_UP).values()) == {S.FAILED} and len(moves(E.GIVE_UP)) == len(S)
    for bad in (("counting",), ["queued", "ready"], "bogus", []):
        with pytest.raises(IllegalTransition):
            moves(E.PUBLISH if bad != [] else E.CLAIM, bad)


def test_the_shortest_chain_of_events_test_helpers_walk():
    from cachetap.testing.entries import path_of_events

    assert path_of_events("counting", "ready") == [E.CLAIM, E.PROBE_ACCEPTED, E.START, E.PUBLISH]
    assert path_of_events("ready", "ready") == []
    assert path_of_events("ready", "counting") == [E.GIVE_UP, E.CLAIM, E.RELEASE]
