"""The life of a catalog entry as one table: its states, the events that move it, and small decisions.

Read like h11's connection state machine: `TRANSITIONS[(state, event)]` is the only way an entry
changes state, and `advance()` raises `IllegalTransition` for anything else, so a task that tries a
move the design does not allow fails loudly instead of leaving a half-changed row. The catalog
applies the moves with conditional UPDATEs (one winner across processes); this module only says
which moves exist. Eviction removes rows (it is not a state); what goes on the wire to capture nodes
("ready", "removed" index events) is named in `cachetap.wire`, not here.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class EntryState(StrEnum):
    COUNTING = "counting"        # seen, below the admission threshold
    PROBING = "probing"          # a worker holds the HEAD-probe claim
    QUEUED = "queued"            # admitted, a download job is queued
    DOWNLOADING = "downloading"  # a worker holds the download claim
    READY = "ready"              # complete, verified, published in the blob store
    REJECTED = "rejected"        # not worth caching (reason says why)
    FAILED = "failed"            # gave up after errors (reason says why)


class Event(StrEnum):
    CLAIM = "claim"                      # an admission (analyze or prefetch) takes the probe claim
    PROBE_ACCEPTED = "probe_accepted"    # the probe passed every rule: a download job is queued
    PROBE_REJECTED = "probe_rejected"    # a probe rule said no
    PROBE_FAILED = "probe_failed"        # the HEAD did not answer usably
    RELEASE = "release"                  # a stale probe claim goes back to counting (reclaim)
    REQUEUE = "requeue"                  # a stale download claim is retaken and its job sent again
    START = "start"                      # a download worker takes the job (or resumes a lapsed lease)
    PROGRESS = "progress"                # bytes arrived, or a retry is scheduled: the lease is renewed
    PUBLISH = "publish"                  # the file is verified and in the blob store
    GIVE_UP = "give_up"                  # the download (or its task) failed for good
    REHOME = "rehome"                    # the node holding a ready object is gone: its owner fetches it again


S, E = EntryState, Event
VERDICTS = frozenset({S.REJECTED, S.FAILED})            # reconsidered once a verdict is old enough
CLAIMED = frozenset({S.PROBING, S.QUEUED, S.DOWNLOADING})  # a worker holds a claim token
AT_REST = frozenset({S.COUNTING, S.READY, S.REJECTED, S.FAILED})
LIVE_DOWNLOAD = frozenset({S.QUEUED, S.DOWNLOADING})    # a download job exists (its temp files are kept)
ADMITTED = frozenset({S.QUEUED, S.DOWNLOADING, S.READY})  # nothing for an admission to do
SETTLED = frozenset({S.READY, S.REJECTED, S.FAILED})    # a download or probe came to an end

TRANSITIONS: dict[tuple[EntryState, Event], EntryState] = {
    (S.COUNTING, E.CLAIM): S.PROBING,
    (S.REJECTED, E.CLAIM): S.PROBING,
    (S.FAILED, E.CLAIM): S.PROBING,
    (S.PROBING, E.CLAIM): S.PROBING,          # only once the old claim is stale (Catalog.claim)
    (S.PROBING, E.PROBE_ACCEPTED): S.QUEUED,
    (S.PROBING, E.PROBE_REJECTED): S.REJECTED,
    (S.PROBING, E.PROBE_FAILED): S.FAILED,
    (S.PROBING, E.RELEASE): S.COUNTING,
    (S.QUEUED, E.REQUEUE): S.QUEUED,
    (S.DOWNLOADING, E.REQUEUE): S.QUEUED,
    (S.QUEUED, E.START): S.DOWNLOADING,
    (S.DOWNLOADING, E.START): S.DOWNLOADING,  # a duplicate delivery once the lease has lapsed
    (S.DOWNLOADING, E.PROGRESS): S.DOWNLOADING,
    (S.DOWNLOADING, E.PUBLISH): S.READY,
    (S.DOWNLOADING, E.GIVE_UP): S.FAILED,
    (S.READY, E.REHOME): S.QUEUED,
}
# A task that fails for good records `failed` whatever state its key was in (CachetapTask.on_failure).
for _state in S:
    TRANSITIONS.setdefault((_state, E.GIVE_UP), S.FAILED)
del _state


class IllegalTransition(ValueError):
    """An event the entry's current state does not allow."""


def advance(state: EntryState | str, event: Event) -> EntryState:
    """The state `event` moves an entry in `state` to; IllegalTransition when the table has no such move."""
    try:
        return TRANSITIONS[(EntryState(state), event)]
    except (KeyError, ValueError):
        raise IllegalTransition(f"{event} is not allowed in state {state!r}") from None


def sources(event: Event) -> frozenset[EntryState]:
    """Every state `event` may start from."""
    return frozenset(state for state, ev in TRANSITIONS if ev is event)


def moves(event: Event, from_states: EntryState | str | Iterable[EntryState | str] | None = None,
          ) -> dict[EntryState, EntryState]:
    """{state: next state} of `event` from each of `from_states` (default: every state it may start
    from): what the catalog's conditional UPDATE may write. IllegalTransition when any of them has no
    such move, so a caller asking for one fails before anything is written."""
    if from_states is None:
        starts: Iterable[EntryState | str] = sources(event)
    elif isinstance(from_states, str):
        starts = (from_states,)
    else:
        starts = from_states
    found: dict[EntryState, EntryState] = {}
    for state in starts:
        target = advance(state, event)  # an unknown state raises IllegalTransition here too
        found[EntryState(state)] = target
    if not found:
        raise IllegalTransition(f"{event} from no state at all")
    return found


def probe_event(failed: bool, accepted: bool) -> Event:
    """The event a finished probe sends its claimed entry: failed, rejected by a rule, or accepted."""
    if failed:
        return E.PROBE_FAILED
    return E.PROBE_ACCEPTED if accepted else E.PROBE_REJECTED


def claim_sources(state: EntryState | str, verdict_age: float, retry_after: float,
                  forced: bool = False) -> tuple[EntryState, ...] | None:
    """The states an admission may claim an entry in `state` from, or None when it has nothing to do.

    Counting entries are claimed (a stale probing claim is retaken by the catalog's conditional
    claim); a verdict (rejected, failed) is reconsidered once it is `retry_after` seconds old, or at
    once when `forced` (an operator's prefetch); queued, downloading and ready entries are left alone.
    """
    state = EntryState(state)
    if state in ADMITTED:
        return None
    if state in VERDICTS:
        return (S.COUNTING, state) if forced or verdict_age >= retry_after else None
    return (S.COUNTING,)


def duplicate_delivery(state: EntryState | str | None, ours: bool) -> str:
    """What a download job that could not take its entry does: "wait" while a live worker holds the
    same claim (a duplicate delivery), else "obsolete" (re-queued, ready, evicted: nothing to do)."""
    return "wait" if ours and state == S.DOWNLOADING else "obsolete"
