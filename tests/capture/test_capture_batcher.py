"""BatchSender: batching by size and age, flush on close, and a broker that is down (real brokers)."""

from __future__ import annotations

import shutil
import socket
import threading

import pytest

from cachetap.capture.batcher import BatchSender, make_analyze_sender
from cachetap.settings import load_settings
from cachetap.tasks.app import create_app
from cachetap.testing.waiting import wait_for
from cachetap.testing.workers import take_tasks
from cachetap.wire import ANALYZE_BATCH

WAIT = 60.0


def wait_until(predicate) -> None:
    wait_for(predicate, timeout=WAIT, step=0.01)


class Collect:
    """A send callable that keeps what it is given (the broker side of the boundary)."""

    def __init__(self) -> None:
        self.batches: list[list[dict]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[dict]) -> None:
        with self.lock:
            self.batches.append(list(batch))

    def items(self) -> list[dict]:
        with self.lock:
            return [item for batch in self.batches for item in batch]


def test_full_batches_go_out_by_size():
    sent = Collect()
    sender = BatchSender(sent, size=10, interval=3600, buffer=1000)
    for n in range(30):
        sender.add({"n": n})
    wait_until(lambda: len(sent.items()) == 30)
    assert [len(b) for b in sent.batches] == [10, 10, 10]
    assert [i["n"] for i in sent.items()] == list(range(30))
    assert sender.close(timeout=WAIT)
    assert (sender.counters.sent_batches, sender.counters.sent_items, sender.counters.dropped) == (3, 30, 0)


def test_a_partial_batch_goes_out_once_its_oldest_waited_the_interval():
    sent = Collect()
    sender = BatchSender(sent, size=100, interval=0.05, buffer=1000)
    for n in range(3):
        sender.add({"n": n})
    wait_until(lambda: len(sent.items()) == 3)
    assert sent.batches == [[{"n": 0}, {"n": 1}, {"n": 2}]]
    sender.close(timeout=WAIT)


def test_close_flushes_what_waits():
    sent = Collect()
    sender = BatchSender(sent, size=100, interval=3600, buffer=1000)
    for n in range(5):
        sender.add({"n": n})
    assert sender.close(timeout=WAIT)
    assert [i["n"] for i in sent.items()] == [0, 1, 2, 3, 4]
    assert sender.pending == 0


class StuckSend:
    """A send() that hangs until released, then collects (a broker that stopped answering)."""

    def __init__(self) -> None:
        self.release, self.entered, self.sent = threading.Event(), threading.Event(), Collect()

    def __call__(self, batch: list[dict]) -> None:
        self.entered.set()
        self.release.wait(WAIT)
        self.sent(batch)


def test_add_never_waits_for_a_send_that_hangs():
    stuck = StuckSend()
    release, entered, sent = stuck.release, stuck.entered, stuck.sent
    sender = BatchSender(stuck, size=10, interval=3600, buffer=1000)
    for n in range(10):
        sender.add({"n": n})
    assert entered.wait(WAIT)
    for n in range(10, 5000):  # the first batch is stuck in send(); add() still returns every time
        sender.add({"n": n})
    assert sender.pending == 1000
    assert sender.counters.dropped == 4000
    release.set()
    wait_until(lambda: sender.pending == 0)
    # the stuck batch was kept whole; of the rest only the newest 990 survived
    assert [i["n"] for i in sent.items()] == list(range(10)) + list(range(4010, 5000))
    sender.close(timeout=WAIT)


def test_what_waits_is_bounded_in_bytes_too():
    """Seen failing on 34b94e0 (no byte bound): 1,000 sightings with 64 KiB URLs would all be held."""
    stuck = StuckSend()
    release, entered, sent = stuck.release, stuck.entered, stuck.sent
    sender = BatchSender(stuck, size=1, interval=3600, buffer=1000, buffer_bytes=1 << 20)
    sender.add({"n": 0, "url": "http://h/x"})
    assert entered.wait(WAIT)
    for n in range(1, 1000):
        sender.add({"n": n, "url": "http://h/" + "a" * 65536})
    assert sender._queued_bytes <= 1 << 20
    assert sender.pending == 1 + (1 << 20) // (65536 + 128 + 10)
    assert sender.counters.dropped == 999 - (sender.pending - 1)
    release.set()
    wait_until(lambda: sender.pending == 0)
    assert [i["n"] for i in sent.items()][-1] == 999  # the newest are kept
    sender.close(timeout=WAIT)


@pytest.mark.parametrize("size, interval, buffer", [(0, 1, 10), (10, 0, 100), (10, 1, 5)])
def test_bad_parameters_are_refused(size, interval, buffer):
    with pytest.raises(ValueError):
        BatchSender(Collect(), size=size, interval=interval, buffer=buffer)


def test_embedded_broker_gone_then_back_drops_oldest_and_loses_nothing_else(tmp_path):
    settings = load_settings(cache_dir=tmp_path / "cache")
    app = create_app(settings)
    queue_dir = settings.broker_dir / "queue"
    shutil.rmtree(queue_dir)  # the broker's folder is gone: every publish fails
    sender = BatchSender(make_analyze_sender(app), size=10, interval=3600, buffer=1000,
                         backoff_first=0.02, backoff_max=0.1)
    for n in range(10):
        sender.add({"n": n})
    wait_until(lambda: sender.counters.send_errors >= 1)  # the first batch is being retried
    for n in range(10, 1500):
        sender.add({"n": n})
    wait_until(lambda: sender.counters.send_errors >= 2)
    assert sender.counters.dropped == 500
    assert sender.counters.sent_items == 0
    queue_dir.mkdir()  # the broker is back
    wait_until(lambda: sender.pending == 0)
    assert sender.close(timeout=WAIT)
    tasks = take_tasks(app, "analyze", count=100, settle=0.5)
    assert {name for name, _ in tasks} == {ANALYZE_BATCH}
    received = [item["n"] for _, (batch,) in tasks for item in batch]
    assert sorted(received) == list(range(10)) + list(range(510, 1500))
    assert (sender.counters.sent_batches, sender.counters.sent_items) == (100, 1000)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: nothing listens there


def test_unreachable_redis_counts_errors_and_close_gives_up_without_raising(tmp_path):
    settings = load_settings(cache_dir=tmp_path / "cache", broker_url=f"redis://127.0.0.1:{closed_port()}/0",
                             result_backend="cache+memory://")
    sender = BatchSender(make_analyze_sender(create_app(settings)), size=2, interval=0.01, buffer=10,
                         backoff_first=0.02, backoff_max=0.1)
    for n in range(25):
        sender.add({"n": n})
    wait_until(lambda: sender.counters.send_errors >= 1)
    assert sender.close(timeout=WAIT) is False
    assert sender.counters.sent_items == 0
    assert sender.counters.dropped == 25  # 15 over the buffer while down, 10 left unsent at close
    assert sender.pending == 0


def test_sightings_on_the_queue_carry_no_client_chosen_padding():
    """Seen failing on 34b94e0: a GET with an 8 KB User-Agent put those bytes (and the raw target)
    into every analyze message, though analyze never reads them."""
    import json

    from cachetap.capture.pipeline import Pipeline
    from cachetap.testing.pcaps import LINKTYPE_ETHERNET, frame_bytes, http_get_packets
    from cachetap.wire import decode_sighting, encode_sighting

    pipeline = Pipeline(load_settings(http_ports=[80]))
    packets = http_get_packets("10.0.0.5", "93.184.216.34", "cdn.example.org", "/a.iso",
                               headers={"User-Agent": "x" * 8000})
    (obs,) = [o for p in packets for o in pipeline.feed(float(p.time), LINKTYPE_ETHERNET, frame_bytes(p))]
    message = encode_sighting(obs.sighting())
    assert len(json.dumps(message)) < 600 and "target" not in message and "user_agent" not in message
    decoded = decode_sighting(json.loads(json.dumps(message)))
    assert decoded is not None and (decoded.url, decoded.key) == (obs.url, obs.key)
