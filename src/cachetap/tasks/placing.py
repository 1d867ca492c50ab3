"""Where a download goes: the owner of its key among the live cache nodes (core/placement.py),
read from the node registry (store/nodes.py) at most once a second per process."""

from __future__ import annotations

import threading
import time
from typing import Any

from cachetap.core.placement import Member, members_from, owner
from cachetap.store.nodes import CACHE_ROLE, liveness_window

REFRESH_EVERY = 1.0


class LiveCacheNodes:
    """The live cache nodes weighted by capacity, refreshed from the registry when older than a second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: list[Member] = []
        self._read_at = float("-inf")

    def members(self, app: Any, now: float) -> list[Member]:
        with self._lock:
            if time.monotonic() - self._read_at >= REFRESH_EVERY:
                window = liveness_window(app.settings.node_heartbeat_interval)
                live = app.catalog.nodes.live(now, window, role=CACHE_ROLE)
                self._members = members_from({n.name: n.capacity for n in live})
                self._read_at = time.monotonic()
            return self._members




def _live(app: Any) -> LiveCacheNodes:
    """One cache per app (a process has one; tests make several, each on its own catalog)."""
    found = getattr(app, "_live_cache_nodes", None)
    if found is None:
        found = app._live_cache_nodes = LiveCacheNodes()
    return found


def download_owner(app: Any, key: str, now: float) -> str | None:
    """The cache node that should download and hold `key`, or None when no cache node is live
    (the job then goes to the shared download queue)."""
    return owner(key, live_cache_members(app, now))


def live_cache_members(app: Any, now: float) -> list[Member]:
    """The live cache nodes as placement members (read at most once a second per process)."""
    return _live(app).members(app, now)
