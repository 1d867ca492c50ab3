"""One admission path for the analyze task and `cachetap prefetch`: claim, probe, accept, record, queue.

Exactly one download per key, cluster-wide: the admitting process must win `Catalog.claim`
(counting -> probing, a conditional UPDATE with a fresh token); only the claim holder probes and
moves the entry on (probing -> queued, guarded by its token) before sending the download job. A
process that dies mid-way leaves a stale claim that `cachetap.schedule.reclaim` recovers; a job the
broker refused is re-sent by the same task once the claim is stale.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kombu.exceptions import OperationalError as BrokerError

from cachetap import metrics
from cachetap.core import lifecycle
from cachetap.core.lifecycle import EntryState
from cachetap.fetch.probe import ProbeError, probe
from cachetap.tasks.policy import forget, reserve
from cachetap.tasks.placing import download_owner
from cachetap.wire import DownloadJob, send_download

if TYPE_CHECKING:
    from cachetap.tasks.app import CachetapCelery

log = logging.getLogger(__name__)

ADMITTED, BUSY = "admitted", "busy"


@dataclass(frozen=True, slots=True)
class Admission:
    """What became of one key: admitted (job sent, or left for reclaim when the broker refused it),
    busy (nothing to do now, `state` says why), or the entry's verdict (rejected, failed)."""

    outcome: str
    state: EntryState | None = None
    reason: str | None = None
    task_id: str | None = None


def admit_key(app: CachetapCelery, key: str, now: float, forced: bool = False) -> Admission:
    """Claim, probe and queue the download of `key`. `forced` (an operator's prefetch) reconsiders a
    rejected or failed entry at once instead of after an admission window."""
    settings, catalog = app.settings, app.catalog
    entry = catalog.get(key)
    if entry is None:
        return Admission(BUSY)
    from_states = lifecycle.claim_sources(entry.state, now - entry.updated_at, settings.admission_window, forced)
    if from_states is None:
        return Admission(BUSY, state=EntryState(entry.state))  # queued, downloading, ready, or a fresh verdict
    token = str(uuid.uuid4())
    if not catalog.claim(key, from_states, token, now=now, stale_after=settings.claim_timeout):
        return Admission(BUSY, state=EntryState.PROBING)  # another worker holds it
    try:
        result = probe(entry.url, app.resolver, settings.probe_timeout)
    except ProbeError as exc:
        log.info("probe of %s failed: %s", entry.url, exc)
        reason = f"probe: {exc}"[:500]
        failed = lifecycle.probe_event(failed=True, accepted=False)
        catalog.mark(key, failed, reason=reason, token=token)
        state = lifecycle.advance(EntryState.PROBING, failed)
        metrics.analyze().rejected.labels("probe_failed").inc()
        return Admission(state, state=state, reason=reason)
    # Every probe rule applies; the request rules (extensions, scope) judged the sightings already,
    # and a prefetch is asked for by name.
    verdict = app.rules.accept_probe(result)
    rejected = lifecycle.probe_event(failed=False, accepted=False)
    refused = verdict.reason if verdict is not None else None
    if refused is None and not reserve(app, key, result.size or 0, now, forced):
        refused = "policy: not worth the space it would take"
    if refused is not None:
        log.info("rejected %s: %s", entry.url, refused)
        catalog.set_probe(key, result, rejected, reason=refused, token=token)
        state = lifecycle.advance(EntryState.PROBING, rejected)
        metrics.analyze().rejected.labels(verdict.reason if verdict is not None else "policy").inc()
        return Admission(state, state=state, reason=refused)
    accepted = lifecycle.probe_event(failed=False, accepted=True)
    state = lifecycle.advance(EntryState.PROBING, accepted)
    # The download's lease starts now.
    if not catalog.set_probe(key, result, accepted, token=token, claimed_at=time.time()):
        forget(app, key)
        return Admission(BUSY)  # the claim went stale and someone else took it
    metrics.analyze().admitted.inc()
    job = DownloadJob.from_probe(key, entry.url, result, token)
    try:
        sent = send_download(app, job, download_owner(app, key, now))
    except BrokerError as exc:
        # The entry stays queued under this claim; reclaim re-sends it once the claim is stale.
        log.error("sending the download of %s failed (%s); reclaim will re-send it", key, exc)
        return Admission(ADMITTED, state=state, reason=f"download job not sent yet: {exc}")
    # The worker may have started it already (and recorded the same id): queued or downloading.
    catalog.set_fields(key, lifecycle.LIVE_DOWNLOAD, token=token, task_id=sent.id)
    log.info("admitted %s (%s bytes)", entry.url, result.size)
    return Admission(ADMITTED, state=state, task_id=sent.id)
