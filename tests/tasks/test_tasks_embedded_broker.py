"""The embedded broker never hands out a half-written message, with producers in other processes."""

import multiprocessing
import time

import pytest

from kombu import Consumer, Exchange, Producer, Queue

from cachetap.settings import load_settings
from cachetap.tasks.app import create_app

COUNT = 1500
QUEUE = Queue("flood", Exchange("flood", type="direct"), routing_key="flood")


def produce(cache_dir, start, count):
    app = create_app(load_settings(cache_dir=cache_dir))
    with app.connection_for_write() as conn:
        producer = Producer(conn.channel())
        for n in range(start, start + count):
            producer.publish({"n": n, "pad": "x" * 4000}, exchange=QUEUE.exchange, routing_key="flood",
                             declare=[QUEUE], serializer="json")


def test_concurrent_producers_and_a_polling_consumer_lose_nothing(tmp_path):
    app = create_app(load_settings(cache_dir=tmp_path, broker_polling_interval=0.001))
    seen, errors = set(), []
    ctx = multiprocessing.get_context("spawn")
    producers = [ctx.Process(target=produce, args=(tmp_path, i * COUNT, COUNT)) for i in range(2)]
    with app.connection_for_read() as conn:
        channel = conn.channel()
        QUEUE(channel).declare()

        def on_message(body, message):
            seen.add(body["n"])
            message.ack()

        with Consumer(channel, queues=[QUEUE], callbacks=[on_message], accept=["json"]):
            for p in producers:
                p.start()
            deadline = time.monotonic() + 120
            while len(seen) < 2 * COUNT and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
                except Exception as exc:  # a torn message surfaces here as a decode error
                    errors.append(repr(exc))
    for p in producers:
        p.join(timeout=60)
    assert errors == []
    assert seen == set(range(2 * COUNT))


WAKE = Queue("wake", Exchange("wake", type="direct"), routing_key="wake")


def _deliver_one(app, send):
    """Consume from WAKE while `send()` runs in a thread; return the bodies that arrived within 10 s."""
    import threading

    got = []
    with app.connection_for_read() as conn:
        channel = conn.channel()
        WAKE(channel).declare()
        with Consumer(channel, queues=[WAKE], callbacks=[lambda body, m: (got.append(body), m.ack())],
                      accept=["json"]):
            timer = threading.Timer(0.5, send)
            timer.start()
            try:
                conn.drain_events(timeout=10)
            except TimeoutError:
                pass
            timer.join()
    return got


def _send(app):
    def send():
        with app.connection_for_write() as conn:
            Producer(conn.channel()).publish({"n": 1}, exchange=WAKE.exchange, routing_key="wake",
                                             declare=[WAKE], serializer="json")
    return send


def test_a_waiting_consumer_wakes_when_a_message_arrives_not_at_its_next_poll(tmp_path):
    # A poll interval far beyond the wait: only the folder watch can deliver in time.
    app = create_app(load_settings(cache_dir=tmp_path, broker_polling_interval=10))
    assert _deliver_one(app, _send(app)) == [{"n": 1}]


def test_without_inotify_the_consumer_still_polls(tmp_path, monkeypatch):
    from cachetap.tasks import embedded_broker

    def no_inotify(self, folder):
        raise OSError("no inotify here")

    monkeypatch.setattr(embedded_broker.FolderWatch, "__init__", no_inotify)
    app = create_app(load_settings(cache_dir=tmp_path, broker_polling_interval=0.05))
    assert _deliver_one(app, _send(app)) == [{"n": 1}]


BINDERS, ROUNDS = 4, 50


def _at_once(calls) -> None:
    """Run the calls in threads released together; re-raise the first error any of them raised."""
    import threading

    barrier, errors = threading.Barrier(len(calls)), []

    def run(call):
        barrier.wait()
        try:
            call()
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _fanout_receivers(channel, exchange: Exchange, queues: list[Queue], round_: int) -> list[str]:
    Producer(channel).publish({"round": round_}, exchange=exchange, serializer="json")
    return [q.name for q in queues if channel.basic_get(q.name, no_ack=True) is not None]


@pytest.fixture
def binder_channels(tmp_path):
    """One channel per binder, each on its own connection (as each of Flower's inspect threads has)."""
    app = create_app(load_settings(cache_dir=tmp_path))
    connections = [app.connection_for_write() for _ in range(BINDERS)]
    try:
        yield [conn.channel() for conn in connections]
    finally:
        for conn in connections:
            conn.release()


def test_queues_bound_to_one_exchange_at_once_all_receive_its_fanout(binder_channels):
    # kombu rewrote the exchange's bindings table in place: binders racing on a new table lost
    # bindings or left it invalid JSON (Flower's concurrent inspects each bind a reply queue).
    channels = binder_channels
    for round_ in range(ROUNDS):
        exchange = Exchange(f"race{round_}", type="fanout")
        queues = [Queue(f"race{round_}-{i}", exchange) for i in range(BINDERS)]
        _at_once([queue(channel).declare for queue, channel in zip(queues, channels)])
        assert _fanout_receivers(channels[0], exchange, queues, round_) == [q.name for q in queues]


def test_queues_deleted_while_others_bind_leave_exactly_the_others_bound(binder_channels):
    channels = binder_channels
    for round_ in range(ROUNDS):
        exchange = Exchange(f"swap{round_}", type="fanout")
        leaving = [Queue(f"swap{round_}-old{i}", exchange) for i in range(BINDERS)]
        coming = [Queue(f"swap{round_}-new{i}", exchange) for i in range(BINDERS)]
        for queue, channel in zip(leaving, channels):
            queue(channel).declare()

        def swap(i):
            return lambda: (leaving[i](channels[i]).delete(), coming[i](channels[i]).declare())
        _at_once([swap(i) for i in range(BINDERS)])
        everyone = leaving + coming
        assert _fanout_receivers(channels[0], exchange, everyone, round_) == [q.name for q in coming]
