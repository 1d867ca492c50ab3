"""Queue `schedule`: beat housekeeping. Prune old hits, recover stale claims, prune broker files.

`reclaim` is what makes "no admitted key is lost" hold even on the embedded broker, which cannot
re-deliver a message whose worker was killed: a `probing` claim older than `claim_timeout` goes back
to `counting` (the next sightings admit it again); a stale `queued` or `downloading` claim is taken
over with a fresh token and its download job is sent again.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import shared_task

from cachetap.core.lifecycle import EntryState, Event, advance, sources
from cachetap.tasks.app import PROCESSED_MAX_AGE, prune_processed
from cachetap.wire import (DOWNLOAD_FETCH, SCHEDULE_PRUNE_BROKER, SCHEDULE_PRUNE_HITS, SCHEDULE_RECLAIM,
                           DownloadJob, send)

log = logging.getLogger(__name__)


@shared_task(bind=True, name=SCHEDULE_PRUNE_HITS)
def prune_hits(self: Any) -> int:
    """Delete hits older than the admission window (they can no longer admit anything)."""
    settings = self.app.settings
    removed = self.app.catalog.prune_hits(before=time.time() - settings.admission_window)
    log.info("pruned %d hits older than %ds", removed, settings.admission_window)
    return removed


@shared_task(bind=True, name=SCHEDULE_RECLAIM)
def reclaim(self: Any) -> dict[str, int]:
    """Recover claims whose worker vanished; returns how many of each kind."""
    app = self.app
    catalog, stale_after = app.catalog, app.settings.claim_timeout
    now = time.time()
    done = {EntryState.PROBING: 0, "resent": 0}
    for entry in catalog.stale_claims(now, stale_after, sources(Event.RELEASE)):
        # Guarded by the old token: a worker that took it meanwhile keeps it.
        if catalog.mark(entry.key, advance(entry.state, Event.RELEASE), token=entry.claim_token,
                        claim_token=None, claimed_at=None):
            done[EntryState.PROBING] += 1
            log.info("stale probe claim on %s released", entry.key)
    for entry in catalog.stale_claims(now, stale_after, sources(Event.REQUEUE)):
        token = str(uuid.uuid4())
        # An atomic retake of the stale claim (state unchanged), then back to queued under it.
        if not catalog.claim(entry.key, [], entry.state, token, now=now, stale_after=stale_after):
            continue
        catalog.mark(entry.key, advance(entry.state, Event.REQUEUE), token=token, claimed_at=now)
        send(app, DOWNLOAD_FETCH, DownloadJob.from_entry(entry, token).to_message())
        done["resent"] += 1
        log.warning("stale %s claim on %s: download job sent again", entry.state, entry.key)
    return done


@shared_task(bind=True, name=SCHEDULE_PRUNE_BROKER)
def prune_broker(self: Any) -> int:
    """Delete messages the embedded broker handed out long ago (kept only for atomic receipt)."""
    settings = self.app.settings
    if not settings.embedded_broker:
        return 0
    return prune_processed(settings.broker_dir, PROCESSED_MAX_AGE)
