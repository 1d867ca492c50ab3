"""Exactly one active beat in a cluster, and scheduled runs recorded in the catalog.

Every node may run `celery beat` (systemd starts one per cache node); `LeasedScheduler` sends
tasks only while it holds the catalog lease `beat`. The holder renews it every `beat_lease / 3`
seconds; the others ask as often and take it over once it ran out, so a holder killed without a
word is replaced within `beat_lease + beat_lease / 3` seconds, and one that stops cleanly hands it
over at once. A row lease (store/leases.py) rather than a PostgreSQL advisory lock or a Redis lock:
the same code holds on SQLite, PostgreSQL and MySQL and needs no connection kept open.

A beat that takes over starts each schedule entry from the latest recorded run of its task (table
`task_runs`), so housekeeping keeps its interval across a takeover instead of running again at once.
A beat that cannot reach the catalog stops sending: no one can hold the lease then, and two beats
sending is worse than a late pass.

`recorded(app, task, work)` runs one scheduled pass under its own lease `run:<task>` (two deliveries
at once, say from a beat that lost its lease mid-tick, do not run the same pass side by side; the
second one is recorded as "busy") and records it: task, node, start, end, outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from celery.beat import PersistentScheduler

from cachetap.lifetime import process_tag

log = logging.getLogger(__name__)

BEAT_LEASE = "beat"
RUN_LEASE_MIN = 300.0  # seconds a pass may hold its run lease at least (a killed worker's lapses)
T = TypeVar("T")


class LeasedScheduler(PersistentScheduler):
    """celery beat's scheduler, sending only while this process holds the catalog's beat lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.holder = process_tag()
        self.holding = False
        super().__init__(*args, **kwargs)

    @property
    def lease_seconds(self) -> float:
        return float(self.app.settings.beat_lease)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        from cachetap.store.leases import Leases

        every = self.lease_seconds / 3
        try:
            held = Leases(self.app.catalog).acquire(BEAT_LEASE, self.holder, time.time(), self.lease_seconds)
        except Exception as exc:  # catalog unreachable: nobody can hold the lease, so send nothing
            log.warning("beat: cannot reach the catalog to hold the beat lease (%s); not sending", exc)
            held = False
        if held and not self.holding:
            # Routine at start (a quiet start logs nothing); a warning when it takes over from another.
            taking_over = getattr(self, "_said_standby", False) or getattr(self, "_held_before", False)
            (log.warning if taking_over else log.info)("beat: this beat (%s) is now the active one", self.holder)
            self._held_before = True
            self._start_from_recorded_runs()
        elif self.holding and not held:
            log.warning("beat: lost the beat lease; standing by")
        elif not held and not getattr(self, "_said_standby", False):
            log.info("beat: another beat is active; standing by")
            self._said_standby = True
        self.holding = held
        if not held:
            return every
        return min(super().tick(*args, **kwargs), every)

    def _start_from_recorded_runs(self) -> None:
        """Each entry's last run is the later of our own and the catalog's record of its task."""
        from cachetap.store.leases import TaskRuns

        try:
            last = TaskRuns(self.app.catalog).last_started({e.task for e in self.schedule.values()})
        except Exception as exc:
            log.warning("beat: cannot read the recorded runs (%s); keeping this beat's own times", exc)
            return
        for entry in self.schedule.values():
            started = last.get(entry.task)
            if started is None:
                continue
            recorded = datetime.fromtimestamp(started, timezone.utc)
            mine = entry.last_run_at
            if mine is None or mine.tzinfo is None or recorded > mine:
                entry.last_run_at = recorded
        self._heap = None  # built again from the new times on this tick

    def close(self) -> None:
        if self.holding:
            from cachetap.store.leases import Leases

            try:
                Leases(self.app.catalog).release(BEAT_LEASE, self.holder)
            except Exception as exc:
                log.warning("beat: could not hand the beat lease over (%s); it lapses by itself", exc)
            self.holding = False
        super().close()


def recorded(app: Any, task: str, work: Callable[[], T], lease: float) -> T | None:
    """Run `work` as one recorded run of `task` under its run lease; None when another run holds it."""
    from cachetap.store.leases import Leases, TaskRuns

    catalog, node = app.catalog, process_tag()
    leases, runs = Leases(catalog), TaskRuns(catalog)
    started = time.time()
    run_id = runs.started(task, node, started)
    if not leases.acquire(f"run:{task}", node, started, max(lease, RUN_LEASE_MIN)):
        runs.ended(run_id, time.time(), "busy")
        log.info("%s: another run is under way; this one skipped", task)
        return None
    outcome = "error"
    try:
        result = work()
        outcome = "ok"
        return result
    finally:
        runs.ended(run_id, time.time(), outcome)
        leases.release(f"run:{task}", node)
