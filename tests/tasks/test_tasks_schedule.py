"""Beat tasks in a real worker: stale claims recovered (even after kill -9), hits and broker files pruned,
the console's minute sample taken."""

from __future__ import annotations

import os
import time

from cachetap.tasks.app import create_app
from cachetap.testing.origin import Resource
from cachetap.testing.workers import CeleryWorker, take_tasks
from cachetap.store.stats import Stats
from cachetap.wire import (ANALYZE_BATCH, DOWNLOAD_FETCH, SCHEDULE_PRUNE_BROKER, SCHEDULE_PRUNE_HITS, SCHEDULE_RECLAIM,
                           SCHEDULE_STATS)
from cachetap.core.lifecycle import Event

MiB = 1 << 20
WAIT = 180


def run(app, name: str, *args):
    queue = "analyze" if name == ANALYZE_BATCH else "schedule"
    return app.send_task(name, args=list(args), queue=queue).get(timeout=WAIT)


def test_reclaim_releases_stale_probes_and_resends_stale_downloads(make_settings, make_sighting):
    settings = make_settings(claim_timeout=600)
    app = create_app(settings)
    catalog = app.catalog
    urls = {name: f"http://files.test/{name}.iso" for name in ("probing", "queued", "downloading", "fresh")}
    keys = {name: make_sighting(u)["key"] for name, u in urls.items()}
    catalog.record_sightings([make_sighting(u) for u in urls.values()], window=86400, now=time.time())
    long_ago = time.time() - 3600
    for name, key in keys.items():
        claimed_at = time.time() if name == "fresh" else long_ago
        assert catalog.claim(key, ["counting"], f"old-{name}", now=claimed_at, stale_after=600)
        if name != "probing":
            catalog.set_probe(key, {"size": 5 * MiB, "etag": '"e"', "content_type": "application/x-iso9660-image"},
                              Event.PROBE_ACCEPTED)
        if name == "downloading":
            assert catalog.advance_claim(key, f"old-{name}", "queued", Event.START, now=claimed_at)
    with CeleryWorker(settings, ["schedule"]):
        assert run(app, SCHEDULE_RECLAIM) == {"probing": 1, "resent": 2}
        assert run(app, SCHEDULE_RECLAIM) == {"probing": 0, "resent": 0}  # fresh claims now
    released = catalog.get(keys["probing"])
    assert (released.state, released.claim_token) == ("counting", None)
    assert catalog.get(keys["fresh"]).claim_token == "old-fresh"
    jobs = {job["key"]: job for _, (job,) in take_tasks(app, "download", count=2, settle=1.0)}
    assert set(jobs) == {keys["queued"], keys["downloading"]}
    for name in ("queued", "downloading"):
        entry = catalog.get(keys[name])
        assert entry.state == "queued" and entry.claim_token not in (None, f"old-{name}")
        assert jobs[entry.key] == {"key": entry.key, "url": urls[name], "size": 5 * MiB, "etag": '"e"',
                                   "last_modified": None, "content_type": "application/x-iso9660-image",
                                   "claim": entry.claim_token}


def test_a_probe_killed_with_its_worker_is_not_lost(make_settings, make_sighting, origin):
    """kill -9 during the probe: the embedded broker cannot re-deliver, the stale claim recovers it."""
    origin.add("/stuck.iso", Resource(size=2 * MiB, delay=120))
    settings = make_settings(claim_timeout=1, probe_timeout=200, admission_threshold=0)
    app = create_app(settings)
    url = f"http://files.test:{origin.port}/stuck.iso"
    key = make_sighting(url)["key"]
    worker = CeleryWorker(settings, ["analyze"]).start()
    try:
        app.send_task(ANALYZE_BATCH, args=[[make_sighting(url)]], queue="analyze")
        deadline = time.monotonic() + WAIT
        while origin.stats("/stuck.iso").requests == 0:  # the probe is in flight
            assert time.monotonic() < deadline, worker.log_text()[-3000:]
            time.sleep(0.05)
        assert app.catalog.get(key).state == "probing"
        worker.kill()
    finally:
        worker.stop()
    origin.add("/stuck.iso", Resource(size=2 * MiB))  # the origin answers now
    while time.time() - app.catalog.get(key).claimed_at <= 1.5:  # let the 1 s lease run out
        time.sleep(0.1)
    with CeleryWorker(settings, ["analyze", "schedule"]):
        assert run(app, SCHEDULE_RECLAIM)["probing"] == 1
        (summary,) = [run(app, ANALYZE_BATCH, [make_sighting(url)])]
    assert summary["admitted"] == 1
    assert app.catalog.get(key).state == "queued"
    ((name, (job,)),) = take_tasks(app, "download", count=1, settle=1.0)
    assert (name, job["key"]) == (DOWNLOAD_FETCH, key)


def test_prune_hits_and_broker_files(make_settings, make_sighting):
    settings = make_settings(admission_window=3600)
    app = create_app(settings)
    now = time.time()
    url = "http://files.test/old.iso"
    app.catalog.record_sightings([make_sighting(url, ts=now - 7200), make_sighting(url, ts=now - 10)],
                                 window=3600, now=now)
    processed = settings.broker_dir / "processed"
    old_file, new_file = processed / "old.msg", processed / "new.msg"
    old_file.write_text("{}")
    new_file.write_text("{}")
    os.utime(old_file, (now - 7200, now - 7200))
    with CeleryWorker(settings, ["schedule"]):
        assert run(app, SCHEDULE_PRUNE_HITS) == 1
        assert run(app, SCHEDULE_PRUNE_BROKER) == 1
        gauges = run(app, SCHEDULE_STATS)  # the console's minute sample, on the same worker
    assert gauges["objects"] == 0 and gauges["stored_bytes"] == 0 and gauges["disk_free"] > 0
    assert Stats(app.catalog).latest_gauges()["disk_free"] == gauges["disk_free"]
    assert not old_file.exists() and new_file.exists()
    counts = app.catalog.record_sightings([make_sighting(url, ts=now)], window=1e9, now=now)
    assert counts == {make_sighting(url)["key"]: 2}  # the recent hit and this one; the old one is gone
