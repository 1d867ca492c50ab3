"""The node registry on every catalog database: heartbeats, liveness, roles merged per node."""

from __future__ import annotations

import threading

from cachetap.store.nodes import Disk, Heartbeat, NodeRegistry, disks_of, liveness_window

WINDOW = liveness_window(5.0)


def test_beat_inserts_then_updates_one_row_per_role(catalog):
    reg = catalog.nodes
    reg.beat("cache-a", "cache", 100.0, public_url="http://127.0.0.2:8642",
             disks=[Disk("/srv/a", 1000, 400)], report={"ok": True})
    reg.beat("cache-a", "cache", 103.0, public_url="http://127.0.0.2:8642",
             disks=[Disk("/srv/a", 1000, 300)], started_at=100.0)
    reg.beat("cache-a", "worker", 104.0)
    rows = reg.rows()
    assert [(r.name, r.role) for r in rows] == [("cache-a", "cache"), ("cache-a", "worker")]
    cache = rows[0]
    assert cache.last_seen == 103.0 and cache.started_at == 100.0
    assert cache.disks == (Disk("/srv/a", 1000, 300),)
    [node] = reg.nodes(now=105.0, window=WINDOW)
    assert node.roles == ("cache", "worker") and node.live
    assert node.public_url == "http://127.0.0.2:8642"
    assert node.capacity == 1000 and node.free == 300
    assert node.version


def test_live_drops_nodes_past_the_window_and_filters_by_role(catalog):
    reg = catalog.nodes
    reg.beat("a", "cache", 100.0, public_url="http://127.0.0.2:8642")
    reg.beat("b", "cache", 80.0, public_url="http://127.0.0.3:8642")
    reg.beat("c", "capture", 100.0, report={"gets_per_s": 12.5, "index_keys": 3})
    now = 101.0
    assert {n.name for n in reg.live(now, WINDOW)} == {"a", "c"}
    assert [n.name for n in reg.live(now, WINDOW, role="cache")] == ["a"]
    everything = {n.name: n for n in reg.nodes(now, WINDOW)}
    assert not everything["b"].live and everything["b"].last_seen == 80.0
    assert everything["c"].reports["capture"] == {"gets_per_s": 12.5, "index_keys": 3}


def test_a_dead_role_leaves_the_live_ones_of_its_node(catalog):
    reg = catalog.nodes
    reg.beat("a", "cache", 60.0, public_url="http://127.0.0.2:8642")  # its cache server died
    reg.beat("a", "capture", 100.0)
    [node] = reg.live(101.0, WINDOW)
    assert node.roles == ("capture",)
    assert reg.live(101.0, WINDOW, role="cache") == []


def test_leave_takes_a_role_out_at_once_and_forget_removes_the_node(catalog):
    reg = catalog.nodes
    reg.beat("a", "cache", 100.0)
    reg.beat("a", "worker", 100.0)
    reg.leave("a", "cache")
    assert [n.roles for n in reg.live(100.5, WINDOW)] == [("worker",)]
    assert reg.forget("a") == 2
    assert reg.nodes(100.5, WINDOW) == []


def test_a_nodes_workers_share_the_worker_row_without_overwriting_each_other(catalog):
    reg = catalog.nodes
    reg.beat("a", "worker", 100.0, report={"queues": ["download", "download.a"]}, process="dl@a", keep_for=WINDOW)
    reg.beat("a", "worker", 101.0, report={"queues": ["analyze"]}, process="an@a", keep_for=WINDOW)
    reg.beat("a", "worker", 102.0, report={"queues": ["download", "download.a"]}, process="dl@a", keep_for=WINDOW)
    [node] = reg.live(102.5, WINDOW)
    assert node.reports["worker"]["queues"] == ["analyze", "download", "download.a"]
    assert {p: r["seen"] for p, r in node.reports["worker"]["processes"].items()} == {"dl@a": 102.0, "an@a": 101.0}
    # One stops cleanly: the other keeps the role live, the leaver's queues leave the report.
    reg.leave("a", "worker", "dl@a", now=103.0, keep_for=WINDOW)
    [node] = reg.live(103.5, WINDOW)
    assert node.roles == ("worker",) and node.reports["worker"]["queues"] == ["analyze"]
    # A process silent past the window drops out at another's beat; the last one leaving ends the role.
    later = 101.0 + WINDOW + 1
    reg.beat("a", "worker", later, report={"queues": ["schedule"]}, process="sc@a", keep_for=WINDOW)
    [node] = reg.live(later, WINDOW)
    assert list(node.reports["worker"]["processes"]) == ["sc@a"] and node.reports["worker"]["queues"] == ["schedule"]
    reg.leave("a", "worker", "sc@a", now=later, keep_for=WINDOW)
    assert reg.live(later, WINDOW) == []


def test_concurrent_beats_of_a_shared_row_keep_every_process(catalog):
    regs = [NodeRegistry(catalog.engine) for _ in range(4)]
    start = threading.Barrier(len(regs))
    errors = []

    def beats(reg: NodeRegistry, i: int) -> None:
        try:
            start.wait(timeout=10)
            for n in range(5):
                reg.beat("a", "worker", 100.0 + n, report={"queues": [f"q{i}"]}, process=f"w{i}@a", keep_for=WINDOW)
        except Exception as exc:  # collected: a lost race must not raise
            errors.append(exc)

    threads = [threading.Thread(target=beats, args=(r, i)) for i, r in enumerate(regs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    [row] = catalog.nodes.rows()
    assert sorted(row.report["processes"]) == ["w0@a", "w1@a", "w2@a", "w3@a"]
    assert row.report["queues"] == ["q0", "q1", "q2", "q3"]


def test_bad_report_text_reads_as_empty_not_as_an_error(catalog):
    reg = catalog.nodes
    reg.beat("a", "capture", 100.0)
    with reg._writer.begin() as conn:
        conn.exec_driver_sql("UPDATE nodes SET report = 'not json', disks = '[{\"path\": 1}]'")
    [row] = reg.rows()
    assert row.report == {} and row.disks == ()


def test_unknown_role_is_refused(catalog):
    import pytest

    with pytest.raises(ValueError, match="unknown node role"):
        catalog.nodes.beat("a", "router", 1.0)


def test_concurrent_first_beats_of_one_role_make_one_row(catalog):
    regs = [NodeRegistry(catalog.engine) for _ in range(4)]
    start = threading.Barrier(len(regs))
    errors = []

    def first_beat(reg: NodeRegistry, i: int) -> None:
        try:
            start.wait(timeout=10)
            reg.beat("a", "worker", 100.0 + i)
        except Exception as exc:  # collected: a lost race must not raise
            errors.append(exc)

    threads = [threading.Thread(target=first_beat, args=(r, i)) for i, r in enumerate(regs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(catalog.nodes.rows()) == 1


def test_heartbeat_thread_writes_until_stopped_then_leaves(catalog, tmp_path):
    reports = iter(range(1000))
    beat = Heartbeat(catalog.nodes, "a", "cache", interval=0.05,
                     describe=lambda: {"public_url": "http://127.0.0.2:8642", "disks": disks_of([tmp_path]),
                                       "report": {"n": next(reports)}})
    beat.start()
    try:
        from cachetap.testing.waiting import wait_for

        wait_for(lambda: beat.beats >= 3, timeout=10)
        [row] = catalog.nodes.rows()
        assert row.report["n"] >= 1 and row.disks[0].path == str(tmp_path) and row.disks[0].total > 0
    finally:
        beat.stop()
    [row] = catalog.nodes.rows()
    assert row.last_seen == 0.0  # left: no longer live for anyone


def test_heartbeat_survives_a_failing_catalog(tmp_path):
    from cachetap.store.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'no-tables.sqlite'}")  # never migrated: writes fail
    beat = Heartbeat(NodeRegistry(engine), "a", "cache", interval=1.0)
    assert beat.beat_once() is False and beat.beat_once() is False
    assert beat.beats == 0
    engine.dispose()
