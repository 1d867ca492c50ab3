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


_LIVE = LiveCacheNodes()


def download_owner(app: Any, key: str, now: float) -> str | None:
    """The cache node that should download and hold `key`, or None when no cache node is live
    (the job then goes to the shared download queue)."""
    return owner(key, _LIVE.members(app, now))
