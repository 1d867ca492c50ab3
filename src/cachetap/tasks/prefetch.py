"""An operator's prefetch of one URL (`cachetap prefetch`, the console's prefetch and retry buttons).

The URL is counted as a sighting and goes through `admit.admit_key` with `forced`: the path the analyze
stage takes, with the same claim, so of concurrent prefetches and admissions one proceeds; a rejected
or failed entry is probed again at once, since the operator asks for it by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetap.core import lifecycle
from cachetap.core.keys import BadTarget, cache_key, canonical_url, host_of
from cachetap.core.lifecycle import EntryState, Event
from cachetap.core.types import Sighting
from cachetap.tasks.admit import ADMITTED, admit_key

if TYPE_CHECKING:
    from cachetap.tasks.app import CachetapCelery

ALREADY, BROKER_DOWN = "already", "broker_down"


class NotCacheable(ValueError):
    """Not a plain http:// URL cachetap can cache; `reason` is short (core.keys.BadTarget's)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Prefetched:
    """What a prefetch did: `outcome` is ALREADY (admitted before: queued, downloading or ready),
    admit's ADMITTED or BUSY, EntryState.REJECTED or FAILED (with `reason`), or BROKER_DOWN."""

    key: str
    url: str
    outcome: str
    state: str | None = None
    reason: str | None = None
    task_id: str | None = None


def prefetch_url(app: CachetapCelery, url: str, now: float | None = None) -> Prefetched:
    settings, catalog = app.settings, app.catalog
    try:
        canonical = canonical_url(url, None, 80)
    except BadTarget as exc:
        raise NotCacheable(exc.reason) from None
    key = cache_key(canonical, settings.strip_query_params)
    now = time.time() if now is None else now
    catalog.record_sightings([Sighting(ts=now, client="prefetch", client_port=0, server="", server_port=0,
                                       method="GET", host=host_of(canonical), url=canonical, key=key,
                                       target=canonical)], window=settings.admission_window, now=now)
    entry = catalog.get(key)
    if entry.state in lifecycle.ADMITTED:
        return Prefetched(key, canonical, ALREADY, entry.state, task_id=entry.task_id)
    admission = admit_key(app, key, now, forced=True)
    if admission.outcome == ADMITTED and admission.task_id is None:
        # Not left queued under a job nobody will run: the next prefetch or admission starts afresh.
        catalog.mark(key, Event.GIVE_UP, EntryState.QUEUED, reason=f"broker unreachable: {admission.reason}"[:500],
                     claim_token=None, claimed_at=None)
        return Prefetched(key, canonical, BROKER_DOWN, EntryState.FAILED, admission.reason)
    state = admission.state.value if admission.state is not None else None
    return Prefetched(key, canonical, str(admission.outcome), state, admission.reason, admission.task_id)
