"""Queue `schedule`: beat housekeeping. Prune old hits, recover stale claims, prune broker files.

`reclaim` is what makes "no admitted key is lost" hold even on the embedded broker, which cannot
re-deliver a message whose worker was killed: a `probing` claim older than `claim_timeout` goes back
to `counting` (the next sightings admit it again); a `queued` claim older than `claim_timeout` and a
`downloading` claim whose heartbeat stopped for `download_lease` (a running download renews it every
second, so a dead one is known within the lease) are taken over with a fresh token and their
download job is sent again. A queued backlog is not re-sent over and over: it has no heartbeat, so
only `claim_timeout` tells it is lost.

`take_back_dead_claims` runs when a worker starts: downloads held by processes of this machine that no
longer exist (the worker it replaces) are sent again at once, without waiting for their lease.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from typing import Any

from celery import shared_task

from cachetap import metrics
from cachetap.core.lifecycle import EntryState, Event, sources
from cachetap.lifetime import tag_is_dead
from cachetap.store.catalog import EntryView
from cachetap.store.stats import Stats, disk_free
from cachetap.tasks.app import PROCESSED_MAX_AGE, PRUNE_HITS_EVERY, STATS_EVERY, prune_processed
from cachetap.tasks.beat import recorded
from cachetap.tasks.placing import download_owner
from cachetap.wire import (SCHEDULE_PRUNE_BROKER, SCHEDULE_PRUNE_HITS, SCHEDULE_RECLAIM, SCHEDULE_STATS,
                           DownloadJob, send_download)

log = logging.getLogger(__name__)
TASK_RUNS_KEPT = 7 * 86_400.0  # seconds the record of scheduled runs is kept


@shared_task(bind=True, name=SCHEDULE_PRUNE_HITS)
def prune_hits(self: Any) -> int | None:
    """Delete hits older than the admission window (they can no longer admit anything), and the
    records of scheduled runs older than TASK_RUNS_KEPT."""
    return recorded(self.app, SCHEDULE_PRUNE_HITS, lambda: _prune_hits(self.app), PRUNE_HITS_EVERY)


def _prune_hits(app: Any) -> int:
    from cachetap.store.leases import TaskRuns

    settings, now = app.settings, time.time()
    removed = app.catalog.prune_hits(before=now - settings.admission_window)
    TaskRuns(app.catalog).prune(before=now - TASK_RUNS_KEPT)
    log.info("pruned %d hits older than %ds", removed, settings.admission_window)
    return removed


@shared_task(bind=True, name=SCHEDULE_RECLAIM)
def reclaim(self: Any) -> dict[str, int] | None:
    """Recover claims whose worker vanished; returns how many of each kind."""
    return recorded(self.app, SCHEDULE_RECLAIM, lambda: _reclaim(self.app), self.app.settings.claim_timeout)


def _reclaim(app: Any) -> dict[str, int]:
    catalog, stale_after = app.catalog, app.settings.claim_timeout
    now = time.time()
    done = {EntryState.PROBING: 0, "resent": 0}
    for entry in catalog.stale_claims(now, stale_after, sources(Event.RELEASE)):
        # Guarded by the old token: a worker that took it meanwhile keeps it.
        if catalog.mark(entry.key, Event.RELEASE, entry.state, token=entry.claim_token,
                        claim_token=None, claimed_at=None):
            done[EntryState.PROBING] += 1
            log.info("stale probe claim on %s released", entry.key)
    # A queued backlog has no heartbeat: only claim_timeout tells it is lost. A download renews its
    # lease every second, so one whose heartbeat stopped for download_lease is dead.
    stale = (catalog.stale_claims(now, stale_after, [EntryState.QUEUED])
             + catalog.stale_claims(now, app.settings.download_lease, [EntryState.DOWNLOADING]))
    for entry in stale:
        if entry.state in sources(Event.REQUEUE) and resend_download(app, entry, now):
            done["resent"] += 1
            log.warning("stale %s claim on %s: download job sent again", entry.state, entry.key)
    return done


def take_back_dead_claims(app: Any) -> int:
    """Send again the downloads that processes of this machine held when they died; returns how many."""
    now = time.time()
    taken = 0
    for entry in app.catalog.claims_held_on(socket.gethostname()[:50], [EntryState.DOWNLOADING]):
        if tag_is_dead(entry.claimed_by) and resend_download(app, entry, now):
            taken += 1
            log.warning("download of %s was held by %s, which is gone: sent again", entry.key, entry.claimed_by)
    return taken


def resend_download(app: Any, entry: EntryView, now: float) -> bool:
    """Take `entry`'s claim over with a fresh token (atomically, from the token it had) and queue its
    download job again; False when someone else changed the claim first."""
    catalog, token = app.catalog, str(uuid.uuid4())
    if entry.claim_token is None or not catalog.retake(entry.key, entry.claim_token, token, now):
        return False
    catalog.mark(entry.key, Event.REQUEUE, entry.state, token=token, claimed_at=now)
    # To the key's owner now: a node that died is out of the live set, so its keys are re-homed.
    send_download(app, DownloadJob.from_entry(entry, token), download_owner(app, entry.key, now))
    return True


@shared_task(bind=True, name=SCHEDULE_PRUNE_BROKER)
def prune_broker(self: Any) -> int | None:
    """Delete messages the embedded broker handed out long ago (kept only for atomic receipt)."""
    settings = self.app.settings
    if not settings.embedded_broker:
        return 0
    return recorded(self.app, SCHEDULE_PRUNE_BROKER,
                    lambda: prune_processed(settings.broker_dir, PROCESSED_MAX_AGE), PROCESSED_MAX_AGE)


@shared_task(bind=True, name=SCHEDULE_STATS)
def stats(self: Any) -> dict[str, int | None] | None:
    """The console's gauges for this minute (objects and bytes ready, disk free) and the pruning of
    minute buckets older than two days. The counters are written where things happen (store/stats.py)."""
    now, settings = time.time(), self.app.settings
    figures = Stats(self.app.catalog)

    def sample() -> dict[str, int | None]:
        free = disk_free(self.app.catalog, settings.cache_dir, settings.node_heartbeat_interval, now)
        gauges = figures.sample(now, free)
        metrics.store().measured(gauges["objects"] or 0, gauges["stored_bytes"] or 0, settings.disk_quota, free)
        figures.prune(now)
        return gauges
    return recorded(self.app, SCHEDULE_STATS, sample, STATS_EVERY)
