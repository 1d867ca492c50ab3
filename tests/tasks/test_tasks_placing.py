"""Download jobs go to the queue of the cache node that owns their key; that node's worker takes them
and the catalog records it as the holder."""

from __future__ import annotations

import time

from cachetap.core.lifecycle import Event
from cachetap.core.placement import members_from, owner
from cachetap.store.nodes import Disk
from cachetap.tasks.admit import admit_key
from cachetap.tasks.app import create_app
from cachetap.tasks.schedule import resend_download
from cachetap.testing.origin import Resource
from cachetap.testing.workers import CeleryWorker, take_tasks
from cachetap.wire import DOWNLOAD_FETCH, download_queue

MiB = 1 << 20
WAIT = 240


def queued_entries(app, make_sighting, count: int) -> list:
    catalog, long_ago = app.catalog, time.time() - 3600
    sightings = [make_sighting(f"http://files.test/f{i}.iso") for i in range(count)]
    catalog.record_sightings(sightings, window=86_400, now=time.time())
    for s in sightings:
        assert catalog.claim(s["key"], ["counting"], f"old-{s['key']}", now=long_ago, stale_after=600)
        catalog.set_probe(s["key"], {"size": 5 * MiB}, Event.PROBE_ACCEPTED)
    return [catalog.get(s["key"]) for s in sightings]


def test_jobs_go_to_the_owner_among_live_cache_nodes(make_settings, make_sighting):
    app = create_app(make_settings())
    now = time.time()
    registry = app.catalog.nodes
    registry.beat("cache-a", "cache", now, disks=[Disk("/a", 2 << 40, 1 << 40)])
    registry.beat("cache-b", "cache", now, disks=[Disk("/b", 1 << 40, 1 << 40)])
    registry.beat("cache-dead", "cache", now - 3600, disks=[Disk("/c", 9 << 40, 1 << 40)])
    registry.beat("capture-1", "capture", now)  # not a cache node: never an owner
    entries = queued_entries(app, make_sighting, 12)
    for entry in entries:
        assert resend_download(app, entry, now)
    members = members_from({"cache-a": 2 << 40, "cache-b": 1 << 40})
    expected = {e.key: owner(e.key, members) for e in entries}
    assert set(expected.values()) == {"cache-a", "cache-b"}  # 12 keys: both nodes own some
    for node in ("cache-a", "cache-b"):
        want = sorted(k for k, o in expected.items() if o == node)
        taken = take_tasks(app, download_queue(node), count=len(want), timeout=30, settle=0.5)
        assert sorted(job["key"] for _, (job,) in taken) == want
    assert take_tasks(app, "download", count=0, settle=0.5) == []


def test_with_no_live_cache_node_jobs_go_to_the_shared_queue(make_settings, make_sighting):
    app = create_app(make_settings())
    app.catalog.nodes.beat("cache-gone", "cache", time.time() - 3600)
    [entry] = queued_entries(app, make_sighting, 1)
    assert resend_download(app, entry, time.time())
    [(name, (job,))] = take_tasks(app, "download", count=1, timeout=30)
    assert name == DOWNLOAD_FETCH and job["key"] == entry.key


def test_admission_sends_to_the_owner_whose_worker_downloads_and_is_named_holder(make_settings, make_sighting,
                                                                                 origin):
    origin.add("/placed.iso", Resource(size=2 * MiB))
    settings = make_settings(node_name="cache-a", admission_threshold=0, download_retries=1, download_timeout=10)
    app = create_app(settings)
    app.catalog.nodes.beat("cache-a", "cache", time.time(), disks=[Disk("/a", 1 << 40, 1 << 40)])
    sighting = make_sighting(f"http://files.test:{origin.port}/placed.iso")
    app.catalog.record_sightings([sighting], window=86_400, now=time.time())
    admission = admit_key(app, sighting["key"], time.time())
    assert admission.task_id is not None, admission
    with CeleryWorker(settings, ["download"]):  # consumes download.cache-a too
        result = app.AsyncResult(admission.task_id).get(timeout=WAIT)
    assert result["digest"] == origin.expected_digest("/placed.iso")
    entry = app.catalog.get(sighting["key"])
    assert (entry.state, entry.node) == ("ready", "cache-a")
