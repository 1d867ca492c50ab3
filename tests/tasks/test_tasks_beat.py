"""One active beat: the catalog lease and the runs it records (takeover after kill -9: tests/test_cluster.py)."""

from __future__ import annotations

import threading

from cachetap.store.leases import Leases, TaskRuns


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


# The beat's takeover after kill -9 and one housekeeping run per interval (recorded in task_runs) are
# shown with two real beats inside the cluster's end-to-end test (tests/test_cluster.py), on PostgreSQL.
