"""Whether the cache server hands an entry out now, and if not, why: the answer `cachetap ls` shows.

Mirrors what web.lookup.CatalogLookup and the capture's redirect index decide (ready and not past
`expires_at`), in words an operator can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetap.core.lifecycle import EntryState


@dataclass(frozen=True)
class Serving:
    served: bool
    why: str          # "fresh for 3h", "stale for 2m", "revalidating", "failed: probe_status_404", ...


def serving(state: str, expires_at: float | None, revalidating_since: float | None, reason: str | None,
            now: float, revalidate_lease: float) -> Serving:
    if state == EntryState.READY:
        if expires_at is None or expires_at > now:
            return Serving(True, "fresh" if expires_at is None else f"fresh for {duration(expires_at - now)}")
        if revalidating_since is not None and revalidating_since > now - revalidate_lease:
            return Serving(False, "revalidating")
        stale = f"stale for {duration(now - expires_at)}"
        return Serving(False, f"{stale}, {reason}" if reason else stale)
    if state in (EntryState.FAILED, EntryState.REJECTED):
        return Serving(False, f"{state}: {reason or 'no reason recorded'}")
    return Serving(False, state)  # counting, probing, queued, downloading: not stored yet


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
