"""What a capture node reports in its node-registry heartbeat (store/nodes.py).

Read on the heartbeat thread, never in the capture loop: the loop's counters are plain ints and
Counters it keeps anyway, read here between two packets without a lock (a figure one packet old is
as good as a fresh one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from cachetap.capture.pipeline import Pipeline


class CaptureReport:
    """`describe()` for the capture's heartbeat: interface, GETs and redirects per second since the
    last beat, ready keys in the index, and each cache server's health as this capture sees it."""

    def __init__(self, interface: str | None, pipeline: Pipeline, index_size: Callable[[], int] | None = None,
                 health: Callable[[], Mapping[str, bool]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interface = interface
        self.pipeline = pipeline
        self.index_size = index_size
        self.health = health
        self.clock = clock
        self._last: tuple[float, int, int] | None = None

    def _totals(self) -> tuple[int, int]:
        for _ in range(3):  # the loop may add a counter key while we sum: read again
            try:
                requests = sum(self.pipeline.decisions.values())
                break
            except RuntimeError:
                continue
        else:
            requests = 0
        redirector = self.pipeline.redirector
        return requests, redirector.redirected if redirector is not None else 0

    def __call__(self) -> dict[str, Any]:
        now = self.clock()
        requests, redirects = self._totals()
        report: dict[str, Any] = {"interface": self.interface, "requests": requests, "redirects": redirects}
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            report["gets_per_s"] = round((requests - self._last[1]) / elapsed, 2)
            report["redirects_per_s"] = round((redirects - self._last[2]) / elapsed, 2)
        self._last = (now, requests, redirects)
        if self.index_size is not None:
            report["index_keys"] = self.index_size()
        if self.health is not None:
            report["cache_servers_ok"] = dict(self.health())
        return {"report": report}
