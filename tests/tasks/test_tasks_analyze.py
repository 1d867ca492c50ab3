"""`cachetap.analyze.batch` in a real `celery worker` over the embedded broker, Redis and RabbitMQ.

The download queue is observed by consuming it through kombu with the app's own broker settings.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cachetap.tasks.app import create_app
from cachetap.testing.origin import Origin, Resource
from cachetap.testing.workers import CeleryWorker, take_tasks
from cachetap.wire import ANALYZE_BATCH, DOWNLOAD_FETCH

MiB = 1 << 20
WAIT = 180


def run_batches(app, batches: list[list[dict]]) -> list[dict]:
    results = [app.send_task(ANALYZE_BATCH, args=[b], queue="analyze") for b in batches]
    return [r.get(timeout=WAIT) for r in results]


@pytest.mark.services
def test_batch_counts_admits_and_queues_one_download(broker_url, make_settings, make_sighting, origin):
    origin.add("/big.iso", Resource(size=4 * MiB, content_type="application/x-iso9660-image"))
    settings = make_settings(broker_url=broker_url)
    app = create_app(settings)
    popular = f"http://files.test:{origin.port}/big.iso"
    once = f"http://files.test:{origin.port}/once.iso"
    with CeleryWorker(settings, ["analyze"]):
        first = run_batches(app, [[make_sighting(popular), make_sighting(once)]])
        second = run_batches(app, [[make_sighting(popular, client="10.0.0.6")]])
    assert first[0]["counted"] == 2 and first[0]["admitted"] == 0
    assert second[0]["counted"] == 1 and second[0]["admitted"] == 1
    popular_key, once_key = make_sighting(popular)["key"], make_sighting(once)["key"]
    entry = app.catalog.get(popular_key)
    assert (entry.state, entry.hits, entry.size, entry.content_type) == ("queued", 2, 4 * MiB, "application/x-iso9660-image")
    assert (app.catalog.get(once_key).state, app.catalog.get(once_key).hits) == ("counting", 1)
    jobs = take_tasks(app, "download", count=1, settle=1.0)
    assert [name for name, _ in jobs] == [DOWNLOAD_FETCH]
    (job,) = jobs[0][1]
    assert job == {"key": popular_key, "url": popular, "size": 4 * MiB, "etag": entry.etag,
                   "last_modified": entry.last_modified, "content_type": "application/x-iso9660-image",
                   "claim": entry.claim_token}
    assert origin.stats("/big.iso").methods == {"HEAD": 1}
    assert origin.stats("/big.iso").hosts == [f"files.test:{origin.port}"]


@pytest.mark.services
@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_two_workers_racing_on_the_same_keys_queue_one_download_each(broker, make_settings, make_sighting,
                                                                    request):
    broker_url = "" if broker == "filesystem" else request.getfixturevalue("redis_broker_url")
    with Origin() as origin:
        paths = [f"/race{i}.iso" for i in range(6)]
        for path in paths:
            origin.add(path, Resource(size=2 * MiB, delay=0.2))  # a slow HEAD widens the race
        settings = make_settings(broker_url=broker_url, admission_threshold=0)
        app = create_app(settings)
        urls = [f"http://files.test:{origin.port}{p}" for p in paths]
        # every batch names every key; batches go to whichever worker is free
        batches = [[make_sighting(u, client=f"10.0.0.{n}") for u in urls] for n in range(8)]
        with CeleryWorker(settings, ["analyze"], name="racer1"), \
                CeleryWorker(settings, ["analyze"], name="racer2", concurrency=2):
            summaries = run_batches(app, batches)
        jobs = take_tasks(app, "download", count=len(urls), settle=2.0)
        per_key = Counter(job["key"] for _, (job,) in jobs)
        assert sorted(per_key.values()) == [1] * len(urls)
        assert sum(s["admitted"] for s in summaries) == len(urls)
        for path in paths:
            assert origin.stats(path).methods["HEAD"] == 1
        assert {e.state for e in app.catalog.entries(limit=100)} == {"queued"}
        assert {e.hits for e in app.catalog.entries(limit=100)} == {len(batches)}


class Attacker(BaseHTTPRequestHandler):
    """The attacker's server: it would hand out its own bytes under the victim's name."""

    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        Attacker.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(50 * MiB))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    do_GET = do_HEAD


@pytest.fixture
def attacker(origin) -> Iterator[str]:
    """The attacker listens on 127.0.0.2 on the real origin's port, so only the address differs."""
    server = ThreadingHTTPServer(("127.0.0.2", origin.port), Attacker)
    Attacker.requests = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield "127.0.0.2"
    server.shutdown()
    server.server_close()


def test_poisoning_forged_host_to_own_address_neither_counts_nor_chooses_the_bytes(
        make_settings, make_sighting, origin, attacker):
    origin.add("/update.exe", Resource(size=3 * MiB))
    settings = make_settings(resolve_overrides={"cdn.test": ["127.0.0.1"]}, trusted_networks=["127.0.0.3/32"])
    app = create_app(settings)
    url = f"http://cdn.test:{origin.port}/update.exe"
    key = make_sighting(url)["key"]
    with CeleryWorker(settings, ["analyze"]):
        (forged,) = run_batches(app, [[make_sighting(url, server=attacker, client=f"10.0.0.{n}") for n in range(10)]])
        assert (forged["untrusted"], forged["counted"], forged["admitted"]) == (10, 0, 0)
        assert app.catalog.get(key) is None
        # Real requests (to the host's address, or to a trusted CDN node) do count; the probe still
        # goes to the cache's own resolution of cdn.test, never to an address from the wire.
        (real,) = run_batches(app, [[make_sighting(url, server="127.0.0.1"),
                                     make_sighting(url, server="127.0.0.3"),
                                     make_sighting(url, server=attacker)]])
    assert (real["counted"], real["untrusted"], real["admitted"]) == (2, 1, 1)
    entry = app.catalog.get(key)
    assert (entry.state, entry.hits, entry.size) == ("queued", 2, 3 * MiB)
    assert Attacker.requests == []
    assert origin.stats("/update.exe").methods == {"HEAD": 1}
    ((_, (job,)),) = take_tasks(app, "download", count=1, settle=1.0)
    assert (job["key"], job["size"]) == (key, 3 * MiB)


def test_rejections_failures_and_bad_input_are_recorded_with_reasons(make_settings, make_sighting, origin):
    origin.add("/nostore.iso", Resource(size=2 * MiB, cache_control="no-store"))
    origin.add("/private.iso", Resource(size=2 * MiB, cache_control="private"))
    origin.add("/small.iso", Resource(size=1000))
    origin.add("/slow.iso", Resource(size=2 * MiB, delay=5))
    settings = make_settings(probe_timeout=0.5)
    app = create_app(settings)
    base = f"http://files.test:{origin.port}"
    names = ["nostore.iso", "private.iso", "small.iso", "missing.iso", "slow.iso"]
    good = [make_sighting(f"{base}/{n}") for n in names for _ in range(2)]
    bad = [
        "not a dict", 42, None, {"key": "x"},
        make_sighting(f"{base}/a.iso", key="../../../etc/passwd"),
        make_sighting(f"{base}/a.iso", ts="yesterday"),
        make_sighting(f"{base}/a.iso", url="ftp://files.test/a.iso"),
        make_sighting(f"{base}/a.iso", server="not an address"),
        make_sighting(f"{base}/secret.iso", authorization=True),
    ]
    with CeleryWorker(settings, ["analyze"]):
        (summary,) = run_batches(app, [good + bad])
        (not_a_list,) = run_batches(app, [{"key": "value"}])
    assert summary == {"counted": 10, "untrusted": 1, "port_mismatch": 0, "authorization": 1, "malformed": 7,
                       "admitted": 0, "rejected": 4, "failed": 1, "busy": 0}
    assert not_a_list["malformed"] == 1 and not_a_list["counted"] == 0
    state = {n: app.catalog.get(make_sighting(f"{base}/{n}")["key"]) for n in names}
    assert {n: (e.state, e.reason) for n, e in state.items() if e.state == "rejected"} == {
        "nostore.iso": ("rejected", "no_store"), "private.iso": ("rejected", "private"),
        "small.iso": ("rejected", "too_small"), "missing.iso": ("rejected", "probe_status_404")}
    assert state["slow.iso"].state == "failed" and state["slow.iso"].reason.startswith("probe: timeout")
    assert app.catalog.get(make_sighting(f"{base}/secret.iso")["key"]) is None
    assert take_tasks(app, "download", count=0, settle=1.0) == []


def test_unreachable_catalog_retries_the_batch_with_the_reason_logged(make_settings, make_sighting, tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on once this block ends
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Results kept apart: by default they would go to the (unreachable) catalog database as well.
    settings = make_settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere",
                             result_backend=f"db+sqlite:///{tmp_path / 'results.sqlite'}")
    app = create_app(settings)
    with CeleryWorker(settings, ["analyze"]) as worker:
        result = app.send_task(ANALYZE_BATCH, args=[[make_sighting("http://files.test/a.iso")]], queue="analyze")
        deadline = time.monotonic() + WAIT
        while result.state != "RETRY":
            assert time.monotonic() < deadline, worker.log_text()[-3000:]
            time.sleep(0.1)
        log = worker.log_text()
    assert "recording 1 sightings failed" in log and "Connection refused" in log
    assert "Retry in" in log
