"""`cachetap.download.fetch` in a real worker with a real aria2c against the real test origin."""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid

import psutil
import pytest
from celery.exceptions import CeleryError

from cachetap.fetch.probe import probe
from cachetap.store.blobs import BlobStore, file_digest
from cachetap.tasks.app import create_app
from cachetap.tasks.capture import PathRefused, checked_capture_path
from cachetap.testing.origin import Resource, generated_chunks
from cachetap.testing.pcaps import http_get_packets, write_capture
from cachetap.testing import waiting
from cachetap.testing.workers import CeleryWorker, take_tasks
from cachetap.web.lookup import CatalogLookup
from cachetap.web.server import CacheServer
from cachetap.core.urls import object_path
from cachetap.wire import ANALYZE_BATCH, CAPTURE_REPLAY, DOWNLOAD_FETCH, SCHEDULE_RECLAIM, DownloadJob
from cachetap.core.lifecycle import Event

MiB = 1 << 20
WAIT = 240


def fast_settings(make_settings, **overrides):
    values = dict(download_retries=1, download_retry_wait=0, download_timeout=10, download_split=4,
                  download_connections_per_server=4)
    values.update(overrides)
    return make_settings(**values)


def admit(app, url: str, make_sighting) -> dict:
    """What analyze does for an admitted key: entry, claim, real HEAD probe, queued; returns the job."""
    catalog, now = app.catalog, time.time()
    sighting = make_sighting(url)
    catalog.record_sightings([sighting], window=86_400, now=now)
    token = str(uuid.uuid4())
    assert catalog.claim(sighting["key"], ["counting"], token, now=now, stale_after=600)
    result = probe(sighting["url"], app.resolver, 30)
    assert catalog.set_probe(sighting["key"], result, Event.PROBE_ACCEPTED, token=token, claimed_at=time.time())
    return DownloadJob.from_probe(sighting["key"], sighting["url"], result, token).to_message()


def faster(origin, path: str, slow: Resource) -> None:
    """The same object (content, ETag, dates) at 2 MB/s per connection opened from now on: the slow
    rate only has to make the kill land mid-transfer. Still paced: an unlimited origin fills the
    socket buffers of connections aria2c is about to close, and the bytes it counts as sent
    overstate what reached the client (the test's "not downloaded twice")."""
    origin.add(path, dataclasses.replace(slow, rate=2_000_000))


def send(app, job):
    return app.send_task(DOWNLOAD_FETCH, args=[job], queue="download")


def wait_for(predicate, what: str, worker=None):
    return waiting.wait_for(predicate, what, WAIT, 0.1, (lambda: worker.log_text()[-4000:]) if worker else None)


def curl_bytes(*args: str) -> bytes:
    return subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, check=True, timeout=120).stdout


@pytest.mark.parametrize("pool", ["prefork", "threads"])  # `cachetap run` uses threads for downloads
def test_download_publishes_a_verified_blob_served_byte_identical(make_settings, make_sighting, origin, pool):
    origin.add("/big.iso", Resource(size=3 * MiB + 4321, rate=4_000_000))
    settings = fast_settings(make_settings)
    app = create_app(settings)
    job = admit(app, f"http://files.test:{origin.port}/big.iso", make_sighting)
    with CeleryWorker(settings, ["download"], pool=pool, concurrency=2) as worker:
        result = send(app, job).get(timeout=WAIT)
        aria2_dirs = list((settings.cache_dir / "aria2").iterdir())
        assert len(aria2_dirs) == 1, worker.log_text()[-3000:]  # one daemon for the worker process
    expected = origin.expected_digest("/big.iso")
    assert result["key"] == job["key"] and result["digest"] == expected and result["size"] == 3 * MiB + 4321
    entry = app.catalog.get(job["key"])
    assert (entry.state, entry.blob, entry.stored_size, entry.claim_token) == ("ready", expected, 3 * MiB + 4321, None)
    assert entry.expires_at > time.time() and entry.published_at is not None and entry.etag == job["etag"]
    assert not (settings.cache_dir / "aria2").exists() or not any((settings.cache_dir / "aria2").iterdir())
    blobs = BlobStore(settings.cache_dir)
    assert file_digest(blobs.path(expected)) == expected and list(blobs.iter_temp()) == []
    # A duplicate delivery of the same job finds the key ready and does nothing.
    with CeleryWorker(settings, ["download"]):
        assert send(app, job).get(timeout=WAIT)["outcome"] == "obsolete"
    assert origin.stats("/big.iso").methods["GET"] >= 1
    served_bytes = origin.stats("/big.iso").body_bytes
    with CacheServer(CatalogLookup(app.catalog, blobs, ttl=0.0)) as server:
        url = server.base_url + object_path(job["key"], "big.iso")
        full = curl_bytes(url)
        ranged = curl_bytes("-r", "1000000-2999999", url)
    data = b"".join(bytes(c) for c in generated_chunks("/big.iso", 0, 3 * MiB + 4321))
    assert full == data and ranged == data[1_000_000:3_000_000]
    assert origin.stats("/big.iso").body_bytes == served_bytes  # the cache served, not the origin


def test_origin_dropping_mid_body_retries_and_then_completes(make_settings, make_sighting, origin):
    origin.add("/drop.iso", Resource(size=3 * MiB, drop_after=2 * MiB + 777))
    settings = fast_settings(make_settings)
    app = create_app(settings)
    job = admit(app, f"http://files.test:{origin.port}/drop.iso", make_sighting)
    with CeleryWorker(settings, ["download"]) as worker:
        pending = send(app, job)
        retrying = wait_for(lambda: (e := app.catalog.get(job["key"])).reason and e, "a retry", worker)
        assert retrying.state == "downloading" and retrying.reason.startswith("retrying: download: ")
        assert retrying.claim_token == job["claim"] and retrying.blob is None
        assert list(BlobStore(settings.cache_dir).iter_blobs()) == []  # nothing partial published
        origin.add("/drop.iso", Resource(size=3 * MiB))  # same content and ETag, now served whole
        result = pending.get(timeout=WAIT)
    assert result["digest"] == origin.expected_digest("/drop.iso")
    entry = app.catalog.get(job["key"])
    assert (entry.state, entry.reason, entry.attempts) == ("ready", None, 2)


@pytest.mark.parametrize("resource, reason", [
    (Resource(size=2 * MiB, extra_length=4096), "aria2_error"),   # Content-Length lie: never completes
    (Resource(size=2 * MiB, change_after=1), "etag_changed"),     # every GET differs from the HEAD
])
def test_lying_or_changing_origin_is_never_published_and_fails_with_the_reason(
        make_settings, make_sighting, origin, resource, reason):
    origin.add("/bad.iso", resource)
    settings = fast_settings(make_settings, download_attempts=2)
    app = create_app(settings)
    job = admit(app, f"http://files.test:{origin.port}/bad.iso", make_sighting)
    with CeleryWorker(settings, ["download"]):
        with pytest.raises(Exception) as err:
            send(app, job).get(timeout=WAIT)
    assert not isinstance(err.value, CeleryError), err.value  # the task's own error, not a timeout
    entry = app.catalog.get(job["key"])
    assert entry.state == "failed" and reason in entry.reason and entry.blob is None
    assert entry.claim_token is None
    blobs = BlobStore(settings.cache_dir)
    assert list(blobs.iter_blobs()) == [] and list(blobs.iter_temp()) == []


def aria2_pids_in(work_dir) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and any(str(work_dir) in a for a in p.info["cmdline"])
            and "aria2c" in p.info["cmdline"][0]]


@pytest.mark.services
@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_download_worker_killed_mid_transfer_is_completed_once(broker, make_settings, make_sighting, origin, request):
    """kill -9 mid-transfer. Embedded broker: reclaim re-sends the stale claim. Redis: acks_late
    re-delivers after the visibility timeout and the lease has run out. Either way the file is
    completed once, continuing the temp file, byte-identical."""
    size = 6 * MiB
    slow = Resource(size=size, rate=200_000)  # per connection: several seconds
    origin.add("/slow.iso", slow)
    if broker == "redis":
        settings = fast_settings(make_settings, broker_url=request.getfixturevalue("redis_broker_url"),
                                 broker_visibility_timeout=4, download_lease=3)
    else:
        settings = fast_settings(make_settings, claim_timeout=3, download_lease=3)
    app = create_app(settings)
    job = admit(app, f"http://files.test:{origin.port}/slow.iso", make_sighting)
    first = CeleryWorker(settings, ["download"], name="first").start()
    try:
        send(app, job)
        wait_for(lambda: app.catalog.get(job["key"]).bytes_done >= size // 4, "a quarter downloaded", first)
        (work_dir,) = (settings.cache_dir / "aria2").iterdir()
        assert aria2_pids_in(work_dir), first.log_text()[-3000:]
        first.kill()
    finally:
        first.stop()
    # The dead worker's aria2c goes with it (death signal), so nothing writes the temp file any more.
    wait_for(lambda: not aria2_pids_in(work_dir), "the orphaned aria2c to exit")
    entry = app.catalog.get(job["key"])
    assert entry.state == "downloading" and entry.bytes_done < size
    faster(origin, "/slow.iso", slow)
    # As if the dead worker ran on another machine: no worker here may judge it dead, only its lease.
    app.catalog.set_fields(job["key"], ["downloading"], token=job["claim"], claimed_by="elsewhere.test:1")
    queues = ["download", "schedule"] if broker == "filesystem" else ["download"]
    with CeleryWorker(settings, queues, name="second") as second:
        if broker == "filesystem":
            wait_for(lambda: time.time() - app.catalog.get(job["key"]).claimed_at > 3.5, "the claim to go stale")
            assert app.send_task(SCHEDULE_RECLAIM, queue="schedule").get(timeout=WAIT)["resent"] == 1
        wait_for(lambda: app.catalog.get(job["key"]).state == "ready", "the entry to be ready", second)
        log = second.log_text()
    entry = app.catalog.get(job["key"])
    expected = origin.expected_digest("/slow.iso")
    assert entry.blob == expected, log[-3000:]
    assert file_digest(BlobStore(settings.cache_dir).path(expected)) == expected
    # The second attempt continued the file: no second full download reached the origin.
    assert origin.stats("/slow.iso").body_bytes <= size * 1.5, origin.stats("/slow.iso")
    assert list(BlobStore(settings.cache_dir).iter_temp()) == []


# A download whose worker is killed resumes within a minute on every broker, with production lease,
# claim and visibility settings: the worker started in its place (as `cachetap run` restarts it) takes
# back the claims its dead predecessor held; a re-delivered job does the same.
RESUME_WITHIN = 60.0


def test_a_killed_download_resumes_within_a_minute_on_every_broker(broker_url, make_settings, make_sighting, origin):
    size = 8 * MiB
    slow = Resource(size=size, rate=300_000)  # several seconds over 4 connections
    origin.add("/big.iso", slow)
    settings = fast_settings(make_settings, broker_url=broker_url)  # production lease and timeouts
    assert settings.download_lease == 30 and settings.claim_timeout == 600
    app = create_app(settings)
    job = admit(app, f"http://files.test:{origin.port}/big.iso", make_sighting)
    first = CeleryWorker(settings, ["download"], name="first").start()
    try:
        send(app, job)
        wait_for(lambda: app.catalog.get(job["key"]).bytes_done >= size // 4, "a quarter downloaded", first)
        first.kill()
        killed_at = time.monotonic()
        done_at_kill = app.catalog.get(job["key"]).bytes_done
    finally:
        first.stop()
    faster(origin, "/big.iso", slow)
    with CeleryWorker(settings, ["download"], name="second") as second:
        wait_for(lambda: (app.catalog.get(job["key"]).bytes_done > done_at_kill
                          or app.catalog.get(job["key"]).state == "ready"), "the download to move again", second)
        stall = time.monotonic() - killed_at
        print(f"broker {broker_url or 'embedded'}: download moved again {stall:.1f}s after kill -9")
        wait_for(lambda: app.catalog.get(job["key"]).state == "ready", "the entry to be ready", second)
        log = second.log_text()
    assert stall < RESUME_WITHIN, log[-3000:]
    expected = origin.expected_digest("/big.iso")
    assert app.catalog.get(job["key"]).blob == expected
    assert file_digest(BlobStore(settings.cache_dir).path(expected)) == expected
    assert origin.stats("/big.iso").body_bytes <= size * 1.5  # continued, not downloaded twice


def test_obsolete_and_malformed_jobs_end_without_downloading(make_settings, make_sighting, origin):
    origin.add("/x.iso", Resource(size=MiB))
    settings = fast_settings(make_settings)
    app = create_app(settings)
    job = admit(app, f"http://files.test:{origin.port}/x.iso", make_sighting)
    with CeleryWorker(settings, ["download"]):
        assert send(app, {**job, "claim": "someone-else"}).get(timeout=WAIT)["outcome"] == "obsolete"
        assert send(app, {**job, "key": "../../etc"}).get(timeout=WAIT)["outcome"] == "bad_job"
        assert send(app, "not a job").get(timeout=WAIT)["outcome"] == "bad_job"
    assert origin.stats("/x.iso").methods["GET"] == 0
    assert app.catalog.get(job["key"]).state == "queued"


def test_replay_reads_only_inside_the_allowed_directories(make_settings, tmp_path):
    settings = make_settings(replay_dirs=[tmp_path / "extra"])
    uploads = settings.cache_dir / "uploads"
    uploads.mkdir(parents=True)
    (tmp_path / "extra").mkdir()
    for path in (uploads / "a.pcap", tmp_path / "extra" / "b.pcap", tmp_path / "outside.pcap"):
        path.write_bytes(b"")
    (uploads / "link.pcap").symlink_to(tmp_path / "outside.pcap")
    assert checked_capture_path(str(uploads / "a.pcap"), settings) == (uploads / "a.pcap").resolve()
    assert checked_capture_path(str(tmp_path / "extra" / "b.pcap"), settings).name == "b.pcap"
    for bad in (str(tmp_path / "outside.pcap"), str(uploads / "link.pcap"), str(uploads / ".." / ".." / "outside.pcap"),
                "/etc/passwd", "", None, 42, str(uploads / "missing.pcap")):
        with pytest.raises(PathRefused):
            checked_capture_path(bad, settings)


def test_replay_task_sends_the_captures_sightings_to_analyze(make_settings):
    settings = make_settings(http_ports=[8080])
    uploads = settings.cache_dir / "uploads"
    uploads.mkdir(parents=True)
    packets = http_get_packets("10.0.0.5", "127.0.0.1", "files.test", "/a.iso", server_port=8080, start=time.time())
    write_capture(uploads / "a.pcap", packets)
    app = create_app(settings)
    with CeleryWorker(settings, ["capture"]):
        summary = app.send_task(CAPTURE_REPLAY, args=[str(uploads / "a.pcap")], queue="capture").get(timeout=WAIT)
        refused = app.send_task(CAPTURE_REPLAY, args=["/etc/passwd"], queue="capture").get(timeout=WAIT)
    assert summary["decisions"] == {"count": 1} and summary["queued"]["sent_items"] == 1, summary
    assert refused["error"].startswith("refused") and "decisions" not in refused
    ((name, (batch,)),) = take_tasks(app, "analyze", count=1, settle=1.0)
    assert name == ANALYZE_BATCH and [s["url"] for s in batch] == ["http://files.test:8080/a.iso"]


def test_job_naming_another_url_than_the_catalog_is_dropped(make_settings, make_sighting, origin):
    """Seen failing on bb0220b: the worker downloaded the job's URL and published it under the key."""
    origin.add("/x.iso", Resource(size=MiB))
    origin.add("/secret.iso", Resource(size=2 * MiB))
    settings = fast_settings(make_settings)
    app = create_app(settings)
    job = admit(app, f"http://files.test:{origin.port}/x.iso", make_sighting)
    forged = {**job, "url": f"http://files.test:{origin.port}/secret.iso", "size": None, "etag": None,
              "last_modified": None}
    with CeleryWorker(settings, ["download"]) as worker:
        assert send(app, forged).get(timeout=WAIT)["outcome"] == "url_mismatch", worker.log_text()[-3000:]
        assert "not the catalog's URL: dropped" in worker.log_text()
        # The genuine job still downloads what the catalog names, validators included.
        assert send(app, {**job, "size": 5, "etag": '"forged"'}).get(timeout=WAIT)["size"] == MiB
    assert origin.stats("/secret.iso").methods == {}
    entry = app.catalog.get(job["key"])
    assert (entry.state, entry.blob) == ("ready", origin.expected_digest("/x.iso"))
