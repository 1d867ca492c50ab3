"""Housekeeping rules: which cold catalog entries to drop, and how many bytes the store may keep.

(Which entries go when over quota is the cache policy's order, `core.policy`.)

* cleanup: an entry with fewer than `min_hits` requests and none for `idle`
  seconds goes. It applies to rows at rest (ready, counting, rejected, failed), so cold counters and
  old refusals are forgotten too and may be judged afresh if they ever come back; `min_hits` 0
  disables it.
* budget: the bytes the stored objects may keep under `disk_quota` and `min_free_bytes`.

Cleanup never picks an entry a worker holds a claim on (probing, queued, downloading).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cachetap.core.lifecycle import AT_REST, EntryState
from cachetap.core.types import Evict


@dataclass(frozen=True, slots=True)
class EntryStat:
    """What the policy needs to know about one catalog entry."""

    key: str
    hits: int
    last_hit: float
    stored_size: int | None = None
    published_at: float | None = None
    blob: str | None = None
    state: str = EntryState.READY
    disk: str | None = None  # which of the node's disks holds it (None: the first)


def cleanup_victims(entries: Iterable[EntryStat], now: float, min_hits: int, idle: float) -> list[Evict]:
    """Entries at rest with fewer than `min_hits` hits and no request for `idle` seconds."""
    return [Evict(e.key, "cold") for e in entries
            if e.state in AT_REST and e.hits < min_hits and now - e.last_hit >= idle]


def bytes_budget(used_bytes: int, quota_bytes: int, free_bytes: int, min_free_bytes: int) -> int:
    """The bytes the stored objects may keep: within `quota_bytes` (0: no quota) and leaving
    `min_free_bytes` free on the disk (every evicted byte of ours is a free byte gained)."""
    budget = used_bytes if quota_bytes <= 0 else min(used_bytes, quota_bytes)
    shortfall = min_free_bytes - free_bytes
    if shortfall > 0:
        budget = min(budget, used_bytes - shortfall)
    return max(0, budget)

