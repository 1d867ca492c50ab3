"""One active beat: the catalog lease, its takeover after kill -9, and runs recorded per interval."""

from __future__ import annotations

import threading
import time

import pytest

from cachetap.store.leases import Leases, TaskRuns
from cachetap.tasks.beat import BEAT_LEASE
from cachetap.testing.waiting import wait_for
from cachetap.testing.workers import CeleryBeat, CeleryWorker
from cachetap.wire import SCHEDULE_CLEANUP, SCHEDULE_RECLAIM


def test_lease_has_one_holder_until_it_runs_out(catalog):
    leases = Leases(catalog)
    assert leases.acquire("beat", "a:1", 100.0, 10.0)
    assert not leases.acquire("beat", "b:2", 105.0, 10.0)
    assert leases.acquire("beat", "a:1", 108.0, 10.0)       # renewed to 118
    assert not leases.acquire("beat", "b:2", 117.0, 10.0)
    assert leases.holder("beat", 117.0) == "a:1"
    assert leases.acquire("beat", "b:2", 118.5, 10.0)       # a fell silent: b takes over
    assert not leases.acquire("beat", "a:1", 119.0, 10.0)
    assert not leases.release("beat", "a:1")                # only the holder gives it up
    assert leases.release("beat", "b:2")
    assert leases.holder("beat", 119.0) is None
    assert leases.acquire("beat", "a:1", 119.0, 10.0)


def test_lease_race_has_one_winner(catalog):
    leases, start, wins = Leases(catalog), threading.Barrier(8), []

    def contend(n: int) -> None:
        start.wait()
        if leases.acquire("race", f"h:{n}", 1000.0, 30.0):
            wins.append(n)
    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and leases.holder("race", 1000.0) == f"h:{wins[0]}"


def test_task_runs_record_and_report_the_latest(catalog):
    runs = TaskRuns(catalog)
    first = runs.started("t.one", "n:1", 10.0)
    runs.ended(first, 11.0, "ok")
    runs.started("t.one", "n:2", 20.0)
    runs.started("t.two", "n:1", 15.0)
    assert runs.last_started(["t.one", "t.two", "t.none"]) == {"t.one": 20.0, "t.two": 15.0}
    assert [(r.node, r.ended_at, r.outcome) for r in runs.runs("t.one")] == [("n:1", 11.0, "ok"), ("n:2", None, None)]
    assert runs.prune(before=16.0) == 2 and [r.task for r in runs.runs()] == ["t.one"]


LEASE = 3.0
TAKEOVER_BOUND = LEASE * 4 / 3
INTERVAL = 10  # the smallest housekeeping_interval allowed


# One server catalog is enough here (the row lease's rules run on all three databases above); each
# run waits out several housekeeping intervals.
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.services)])
def test_killed_beat_is_replaced_and_housekeeping_runs_once_per_interval(backend, make_settings, server_databases,
                                                                         request):
    """Two real beats on one catalog; kill -9 the active one. The other takes over within 4/3 of the
    lease, and the runs the catalog records keep one per interval (two active beats would double them)."""
    if backend == "sqlite":
        extra = {}
    else:
        from tests.conftest import _drop_all_tables

        url = server_databases["postgresql"]
        _drop_all_tables(url)
        extra = {"database_url": url, "broker_url": request.getfixturevalue("redis_broker_url")}
    settings = make_settings(beat_lease=LEASE, housekeeping_interval=INTERVAL, revalidate_interval=INTERVAL,
                             download_lease=10, log_level="INFO", **extra)
    from cachetap.store.catalog import open_catalog

    catalog = open_catalog(settings.effective_database_url)
    leases, runs = Leases(catalog), TaskRuns(catalog)
    beats = [CeleryBeat(settings, "a"), CeleryBeat(settings, "b")]
    try:
        with CeleryWorker(settings, ["schedule"]) as worker:
            beats[0].start()
            wait_for(lambda: leases.holder(BEAT_LEASE, time.time()) == beats[0].tag, timeout=60,
                     detail=lambda: f"beat a never took the lease:\n{beats[0].log_text()[-3000:]}")
            beats[1].start()
            wait_for(lambda: "standing by" in beats[1].log_text() or len(runs.runs(SCHEDULE_CLEANUP)) >= 1,
                     timeout=60, detail=lambda: beats[1].log_text()[-3000:])
            wait_for(lambda: len(runs.runs(SCHEDULE_CLEANUP)) >= 1, timeout=3 * INTERVAL,
                     detail=lambda: f"no cleanup ran:\n{worker.log_text()[-3000:]}\n{beats[0].log_text()[-2000:]}")
            assert leases.holder(BEAT_LEASE, time.time()) == beats[0].tag   # b stood by meanwhile
            beats[0].kill()
            killed = time.time()
            wait_for(lambda: leases.holder(BEAT_LEASE, time.time()) == beats[1].tag, timeout=30,
                     detail=lambda: beats[1].log_text()[-3000:])
            took_over = time.time() - killed
            wait_for(lambda: len(runs.runs(SCHEDULE_CLEANUP, since=killed)) >= 2, timeout=4 * INTERVAL,
                     detail=lambda: f"{worker.log_text()[-3000:]}\n{beats[1].log_text()[-2000:]}")
    finally:
        for beat in beats:
            beat.stop()
    print(f"{backend}: standby took the beat lease {took_over:.2f}s after kill -9 (lease {LEASE}s)")
    assert took_over <= TAKEOVER_BOUND + 0.5, f"takeover after {took_over:.1f}s, bound {TAKEOVER_BOUND:.1f}s"
    for task, every in ((SCHEDULE_CLEANUP, INTERVAL), (SCHEDULE_RECLAIM, 5)):
        done = runs.runs(task)
        assert done and all(r.outcome == "ok" for r in done), done
        starts = [r.started_at for r in done]
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        print(f"{backend}: {task} started at gaps {[round(g, 2) for g in gaps]}s (interval {every}s)")
        assert gaps and min(gaps) >= every - 1.0, f"{task} ran twice in one interval: gaps {gaps}"
        # the gap across the kill is at most an interval plus the takeover
        assert max(gaps) <= every + TAKEOVER_BOUND + 2.0, f"{task} skipped intervals: gaps {gaps}"
    catalog.engine.dispose()
