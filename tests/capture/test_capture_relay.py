"""SightingRelay: sightings cross to a real child process and on to a real BatchSender (and broker);
a lagging child costs drops, never a wait; a dead child hands over to an in-process sender."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from cachetap.capture.batcher import BatchSender, make_analyze_sender
from cachetap.capture.relay import FLUSH_COUNT, SightingRelay
from cachetap.settings import load_settings
from cachetap.tasks.app import create_app
from cachetap.testing.waiting import wait_for
from cachetap.testing.workers import take_tasks
from cachetap.wire import ANALYZE_BATCH


class FileSink:
    """The broker side of the boundary, seen from the test: a BatchSender whose batches are appended
    to a file as JSON lines, with the process that sent them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> BatchSender:
        def send(batch: list[dict]) -> None:
            with self.path.open("a") as out:
                out.write(json.dumps({"pid": os.getpid(), "batch": batch}) + "\n")

        return BatchSender(send, size=100, interval=0.01, buffer=1_000_000)

    def lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def items(self) -> list[dict]:
        return [item for line in self.lines() for item in line["batch"]]


def sighting(n: int) -> dict:
    return {"ts": 1.5, "client": "10.0.0.2", "client_port": 40000 + n, "url": f"http://h/{n}", "authorization": False,
            "range": None}


def test_every_sighting_arrives_in_order_from_another_process(tmp_path):
    sink = FileSink(tmp_path / "sent.jsonl")
    relay = SightingRelay(sink)
    for n in range(FLUSH_COUNT * 3 + 5):  # three full messages and a partial one
        relay.add(sighting(n))
    relay.flush()
    relay.close(timeout=30)
    assert sink.items() == [sighting(n) for n in range(FLUSH_COUNT * 3 + 5)]
    assert {line["pid"] for line in sink.lines()} == {relay.pid}  # sent by the child, not by us
    assert (relay.counters.relayed, relay.counters.dropped, relay.counters.fallback) == (FLUSH_COUNT * 3 + 5, 0, 0)
    assert not _alive(relay.pid)


def test_a_flush_sends_a_partial_batch_without_waiting_for_close(tmp_path):
    sink = FileSink(tmp_path / "sent.jsonl")
    relay = SightingRelay(sink)
    try:
        relay.add(sighting(1))
        time.sleep(0.2)
        assert sink.items() == []  # still in the capture process
        relay.flush()
        wait_for(lambda: sink.items() == [sighting(1)], timeout=30, step=0.01)
    finally:
        relay.close(timeout=30)


def test_a_child_that_lags_costs_counted_drops_never_a_wait(tmp_path):
    sink = FileSink(tmp_path / "sent.jsonl")
    relay = SightingRelay(sink)
    os.kill(relay.pid, signal.SIGSTOP)  # the child stops reading: the socket buffer fills up
    try:
        started = time.monotonic()
        n = 0
        while relay.counters.dropped == 0 and time.monotonic() - started < 30:
            relay.add(sighting(n))
            n += 1
        assert relay.counters.dropped > 0
        assert relay.counters.relayed + relay.counters.dropped + len(relay._pending) == n
    finally:
        os.kill(relay.pid, signal.SIGCONT)
        relay.close(timeout=60)
    assert len(sink.items()) == relay.counters.relayed  # what was relayed is delivered, nothing twice


def test_a_dead_child_hands_over_to_an_in_process_sender(tmp_path):
    sink = FileSink(tmp_path / "sent.jsonl")
    relay = SightingRelay(sink)
    relay.add(sighting(0))
    relay.flush()
    wait_for(lambda: len(sink.items()) == 1, timeout=30, step=0.01)
    os.kill(relay.pid, signal.SIGKILL)
    os.waitpid(relay.pid, 0)
    for n in range(1, 4):
        relay.add(sighting(n))
        relay.flush()  # the first send after the death notices it
    relay.close(timeout=30)
    assert sink.items() == [sighting(n) for n in range(4)]
    assert [line["pid"] for line in sink.lines()][1:] == [os.getpid()] * (len(sink.lines()) - 1)
    assert relay.counters.fallback == 3


def test_signals_to_the_process_group_leave_the_child_to_the_parent(tmp_path):
    sink = FileSink(tmp_path / "sent.jsonl")
    relay = SightingRelay(sink)
    try:
        relay.add(sighting(0))
        os.kill(relay.pid, signal.SIGTERM)
        os.kill(relay.pid, signal.SIGINT)
        time.sleep(0.2)
        assert _alive(relay.pid)  # Ctrl-C or systemd's stop: the child waits for the parent's EOF
    finally:
        relay.close(timeout=30)
    assert sink.items() == [sighting(0)]


def test_sightings_reach_the_analyze_queue_of_a_real_broker(tmp_path):
    settings = load_settings(cache_dir=tmp_path / "cache")
    app = create_app(settings)
    relay = SightingRelay(lambda: BatchSender(make_analyze_sender(app), size=10, interval=0.05, buffer=1000))
    for n in range(25):
        relay.add(sighting(n))
    relay.close(timeout=30)
    tasks = take_tasks(app, "analyze", count=3, settle=0.5)
    assert {name for name, _ in tasks} == {ANALYZE_BATCH}
    received = [item for _, (batch,) in tasks for item in batch]
    # The embedded broker does not keep the order of messages sent within a millisecond.
    assert sorted(received, key=lambda item: item["client_port"]) == [sighting(n) for n in range(25)]


def test_when_no_process_can_be_forked_the_capture_process_sends_itself(tmp_path, monkeypatch):
    def fork_fails() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")  # fork(2)'s EAGAIN

    monkeypatch.setattr(os, "fork", fork_fails)
    sink = FileSink(tmp_path / "sent.jsonl")
    relay = SightingRelay(sink)
    relay.add(sighting(0))
    relay.close(timeout=30)
    assert sink.items() == [sighting(0)]
    assert {line["pid"] for line in sink.lines()} == {os.getpid()}
    assert relay.counters.fallback == 1


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0
