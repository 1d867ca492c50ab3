"""Queue `download`: fetch one admitted object with aria2, verify it, publish it, mark it ready.

Exactly one download per key at a time. The job carries the claim token the analyze (or reclaim)
step queued it under; the worker moves the entry queued -> downloading under that token with one
conditional UPDATE (`Catalog.advance_claim`), and while data flows it renews `claimed_at` every
second: that timestamp is a lease. A job delivered again (a duplicate, a Redis/RabbitMQ re-delivery
after its worker died, or our own retry) finds the entry `downloading` under the same token and
takes it over only once the lease has run out (`settings.download_lease`); while it is fresh,
another worker is alive on the key and the job waits (retry with a countdown). A job whose token
no longer matches was superseded (reclaim re-queued the key, it is ready, evicted...) and ends.
What is downloaded comes from the catalog row (URL, size, validators), never from the job: a job whose
URL differs from the row's is dropped and logged.

The embedded broker cannot re-deliver after a kill -9 (see tasks/app.py); there the beat task
`reclaim` re-queues the stale claim with a fresh token. Either way the new attempt continues the
temp file from aria2's control file, and the dead worker's aria2c is gone (it gets SIGTERM when its
parent dies, see fetch/aria2.py), so nothing else writes the file meanwhile.

One aria2c per worker process, started lazily under cache_dir/aria2/<hostname>-<pid> and stopped at
worker (process) shutdown.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from celery import shared_task
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from cachetap import metrics
from cachetap.core import lifecycle
from cachetap.core.freshness import expires_at
from cachetap.core.lifecycle import EntryState, Event, advance
from cachetap.fetch.aria2 import Aria2Daemon, Aria2Error, Aria2Options
from cachetap.fetch.download import DownloadError, download
from cachetap.fetch.resolver import FetchRefused, Resolver
from cachetap.lifetime import process_tag, tag_is_dead
from cachetap.settings import Settings
from cachetap.store.disks import Disks, NoDisk
from cachetap.store.catalog import Catalog, EntryView
from cachetap.store.stats import Stats
from cachetap.tasks.app import retry_countdown
from cachetap.tasks.index_events import publish_index_event
from cachetap.tasks.policy import forget
from cachetap.tasks.schedule import take_back_dead_claims
from cachetap.wire import DOWNLOAD_DROP, DOWNLOAD_FETCH, INDEX_READY, DownloadJob, FileDrop

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0   # seconds between progress writes (they also renew the lease)


class ClaimLost(Exception):
    """Our claim was taken over (reclaimed as stale): stop, the new holder downloads the key."""


# ---- one aria2c per worker process ---------------------------------------------------------------

_daemon: Aria2Daemon | None = None
_daemon_pid: int | None = None
_daemon_lock = threading.Lock()


def worker_daemon(settings: Settings) -> Aria2Daemon:
    """This process's aria2c, started on first use and restarted if it died."""
    global _daemon, _daemon_pid
    with _daemon_lock:
        if _daemon is None or _daemon_pid != os.getpid():  # a forked child makes its own
            work_dir = settings.cache_dir / "aria2" / f"{socket.gethostname()}-{os.getpid()}"
            _daemon, _daemon_pid = Aria2Daemon(work_dir, Aria2Options.from_settings(settings)), os.getpid()
        _daemon.ensure_running()
        return _daemon


@worker_process_shutdown.connect
@worker_shutdown.connect
def stop_worker_daemon(**_: Any) -> None:
    global _daemon
    with _daemon_lock:
        if _daemon is None or _daemon_pid != os.getpid():
            return
        daemon, _daemon = _daemon, None
    daemon.stop()
    shutil.rmtree(daemon.work_dir, ignore_errors=True)  # its session names no download we still want
    log.info("aria2c of worker process %s stopped", os.getpid())


@worker_ready.connect
def take_back_on_start(sender: Any = None, **_: Any) -> None:
    """A worker that starts (e.g. restarted after its predecessor was killed) sends the downloads that
    dead processes of this machine held again at once."""
    app = getattr(sender, "app", None)
    if app is None or not hasattr(app, "catalog"):
        return
    try:
        take_back_dead_claims(app)
    except Exception as exc:  # the reclaim pass recovers them after their lease
        log.warning("taking back downloads of dead workers failed: %s", exc)


# ---- the task ------------------------------------------------------------------------------------

@shared_task(bind=True, name=DOWNLOAD_FETCH)
def fetch(self: Any, message: dict) -> dict[str, Any]:
    """Download one admitted object; returns {key, digest, size, seconds} (or {key, outcome})."""
    app, settings = self.app, self.app.settings
    catalog = app.catalog
    job = DownloadJob.from_message(message)
    if job is None:
        log.error("download job without a valid key and claim, dropped: %.200r", message)
        key = message.get("key") if isinstance(message, Mapping) and isinstance(message.get("key"), str) else None
        return {"key": key, "outcome": "bad_job"}
    key, claim = job.key, job.claim
    entry = catalog.get(key)
    if entry is not None and entry.claim_token == claim and entry.url != job.url:
        # Whoever wrote this job could reach the broker; the catalog says what the key names.
        log.warning("download job for %s names %.200r, not the catalog's URL: dropped", key, job.url)
        return {"key": key, "outcome": "url_mismatch"}
    now = time.time()
    downloading = advance(EntryState.QUEUED, Event.START)
    taken = (catalog.advance_claim(key, claim, EntryState.QUEUED, Event.START, now)
             or catalog.advance_claim(key, claim, downloading, Event.START, now, idle_for=settings.download_lease)
             or _holder_died(catalog, key, claim, now))
    if not taken:
        return _not_taken(self, catalog, key, claim, settings.download_lease)
    catalog.set_fields(key, [downloading], token=claim, task_id=self.request.id, speed=0, claimed_by=process_tag())
    started = time.monotonic()
    figures = metrics.download()
    figures.active.inc()
    try:
        disk, blobs = app.disks.place(key, entry.size)  # this key's disk, by hash
        daemon = worker_daemon(settings)
        result = download(_pinned(DownloadJob.from_entry(entry, claim), app.resolver), daemon, blobs, daemon.options,
                          on_progress=_heartbeat(catalog, key, claim))
    except ClaimLost:
        log.warning("download of %s was taken over by another worker; stopping", key)
        return {"key": key, "outcome": "taken_over"}
    except Aria2Error as exc:
        raise _failed(self, catalog, key, claim,
                      DownloadError("aria2_unavailable", retryable=True, detail=str(exc))) from exc
    except DownloadError as exc:
        raise _failed(self, catalog, key, claim, exc) from None
    except NoDisk as exc:
        raise _failed(self, catalog, key, claim, DownloadError("no_disk", retryable=True, detail=str(exc))) from None
    finally:
        figures.active.dec()
    seconds = round(time.monotonic() - started, 3)
    figures.bytes.inc(result.size)
    figures.duration.observe(seconds)
    now = time.time()
    try:
        entry = catalog.get(key)
        deadline = freshness_deadline(settings, entry, now)
        published = catalog.mark(
            key, Event.PUBLISH, downloading, token=claim, blob=result.digest, size=result.size,
            stored_size=result.size, published_at=now, etag=result.etag, content_type=result.content_type,
            node=settings.effective_node_name, disk=disk,
            expires_at=deadline, bytes_done=result.size, speed=0,
            claim_token=None, claimed_at=None, claimed_by=None)
    finally:
        if result.hold is not None:
            result.hold.release()  # the row names the blob now: an eviction of another key keeps it
    if not published:
        log.warning("%s downloaded but its claim was taken over meanwhile; not marked by us", key)
        return {"key": key, "outcome": "taken_over", "digest": result.digest}
    log.info("downloaded %s: %d bytes in %.1fs, digest %s", job.url, result.size, seconds, result.digest)
    try:
        Stats(catalog).count_fetched(key, result.size, now)  # what filling the cache cost (bytes saved)
    except Exception as exc:  # figures never fail a download that is published
        log.warning("origin bytes of %s not counted: %s", key, exc)
    # Capture nodes add the key to their redirect index now (best effort: they also reconcile).
    publish_index_event(app, INDEX_READY, [key], expires=[deadline], node=settings.effective_node_name)
    return {"key": key, "digest": result.digest, "size": result.size, "seconds": seconds}


def _pinned(job: DownloadJob, resolver: Resolver) -> dict[str, Any]:
    """The job with the addresses to connect to: the cache's own resolution of the host (overrides,
    then DNS), never an address seen on the wire (the poisoning guard in tasks/analyze.py), and
    only those the fetch guard allows (core/egress.py)."""
    message = job.to_message()
    try:
        host = urlsplit(str(job.url)).hostname
    except ValueError:
        host = None
    if not host:
        return message  # download() rejects the URL with the reason
    try:
        addresses = resolver.fetch_addresses(host)  # the fetch guard, on the addresses aria2 gets
    except FetchRefused as exc:
        raise DownloadError("forbidden_address", retryable=False, detail=str(exc)) from None
    if not addresses:
        raise DownloadError("unresolved", retryable=True, detail=host)
    return {**message, "addresses": addresses}


def _holder_died(catalog: Catalog, key: str, claim: str, now: float) -> bool:
    """A re-delivered job (RabbitMQ at once, Redis after its visibility timeout) whose previous holder
    was a process of this machine that is gone takes over without waiting for the lease."""
    entry = catalog.get(key)
    if entry is None or entry.claim_token != claim or not tag_is_dead(entry.claimed_by):
        return False
    log.warning("download of %s was held by %s, which is gone: taking over", key, entry.claimed_by)
    return catalog.advance_claim(key, claim, EntryState.DOWNLOADING, Event.START, now)


def _not_taken(task: Any, catalog: Catalog, key: str, claim: str, lease: float) -> dict[str, Any]:
    """Another live worker holds the key (wait for it), or the job is obsolete (end)."""
    entry = catalog.get(key)
    ours = entry is not None and entry.claim_token == claim
    if lifecycle.duplicate_delivery(entry.state if entry is not None else None, ours) == "wait":
        held_for = lease - (time.time() - (entry.claimed_at or 0.0))
        log.info("%s is being downloaded by a live worker; checking again in %.0fs", key, max(1.0, held_for))
        # Rare (a duplicate delivery) and bounded by the live download; it does count as a retry.
        raise task.retry(countdown=max(1.0, held_for + 1.0), max_retries=None)
    state = entry.state if entry is not None else "gone"
    log.info("download job for %s is obsolete (entry %s, claim %s): nothing to do", key, state,
             "ours" if ours else "another")
    return {"key": key, "outcome": "obsolete", "state": state}


def _heartbeat(catalog: Catalog, key: str, claim: str) -> Callable[[int, int, int], None]:
    """on_progress for download(): progress and lease renewal, at most once a second."""
    last = 0.0

    def on_progress(done: int, total: int, speed: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < HEARTBEAT_EVERY:
            return
        last = now
        try:
            held = catalog.mark(key, Event.PROGRESS, EntryState.DOWNLOADING, token=claim,
                                bytes_done=done, speed=speed,
                                claimed_at=time.time())
        except Exception as exc:  # a busy or unreachable catalog must not stop the bytes
            log.warning("progress of %s not recorded: %s", key, exc)
            return
        if not held:
            raise ClaimLost(key)

    return on_progress


def _failed(task: Any, catalog: Catalog, key: str, claim: str, exc: DownloadError) -> Exception:
    """Retry a retryable error later (the claim stays, so nothing else starts), else fail for good.

    Returns the exception for the caller to raise: Celery's Retry, or `exc` after recording it."""
    reason = f"download: {exc}"[:500]
    if exc.retryable and task.request.retries < task.app.settings.download_attempts - 1:
        # Keep state and token; only holders of the token may take it, and this retry can resume at
        # once when it arrives.
        # The lease is set to lapse when the retry is due (not at once), so the reclaim pass does not
        # send the job again meanwhile.
        lease = task.app.settings.download_lease
        countdown = retry_countdown(task.request.retries)
        catalog.mark(key, Event.PROGRESS, EntryState.DOWNLOADING, reason=f"retrying: {reason}"[:500],
                     token=claim, speed=0, claimed_at=time.time() + countdown - lease - 1)
        log.warning("download of %s failed (%s); retry %d in %.0fs", key, exc, task.request.retries + 1, countdown)
        metrics.download().failures.labels(exc.reason, "retrying").inc()
        return task.retry(exc=exc, countdown=countdown, max_retries=None, throw=False)
    log.error("download of %s failed for good: %s", key, exc)
    metrics.download().failures.labels(exc.reason, "gave_up").inc()
    forget(task.app, key)
    catalog.mark(key, Event.GIVE_UP, EntryState.DOWNLOADING, reason=reason, token=claim,
                 claim_token=None, claimed_at=None, bytes_done=0, speed=0)
    return exc


def freshness_deadline(settings: Settings, entry: EntryView | None, now: float) -> float:
    """When the stored copy stops being fresh: the probe's validators under the refresh rules."""
    headers = {}
    if entry is not None and entry.cache_control:
        headers["Cache-Control"] = entry.cache_control
    if entry is not None and entry.last_modified:
        headers["Last-Modified"] = entry.last_modified
    host, path = (entry.host, urlsplit(entry.url).path) if entry is not None else ("", "")
    return settings.refresh_policy().fresh_until(now, headers, host, path)


@shared_task(bind=True, name=DOWNLOAD_DROP)
def drop(self: Any, message: dict) -> str:
    """Delete a file of this node whose row another node removed (a purge, the cluster's policy),
    unless a row still names it on that disk; returns what happened."""
    job = FileDrop.from_message(message)
    if job is None:
        log.warning("file drop without a valid digest and disk, ignored: %.200r", message)
        return "bad_job"
    return drop_file(self.app.catalog, self.app.disks, job)


def drop_file(catalog: Catalog, disks: Disks, job: FileDrop) -> str:
    if job.disk is not None and job.disk not in disks.disks:
        return "not_our_disk"  # a label from the broker is looked up, never used as a path
    store, label = disks.store(job.disk), disks.label_of(job.disk)
    if store is None:
        return "disk_unusable"
    if store.remove_unreferenced(job.blob, lambda: not catalog.blob_referenced(job.blob, label)):
        log.info("deleted %s from %s: its entry was removed on another node", job.blob, label)
        return "deleted"
    return "kept"
