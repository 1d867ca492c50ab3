"""Queue `analyze`: count sightings, admit popular keys, probe them once, queue one download each.

Poisoning rule. A client decides both the Host header and the address it sends a request to, so
it could send `Host: cdn.example.com` to a server it controls and, if we trusted the wire, make
us count requests for (and later redirect everyone to) bytes of its choosing. Therefore:
  * a sighting counts only when its observed destination address is among the cache's *own* DNS
    answers for the Host (`fetch.resolver.Resolver`, overrides first) or inside
    `settings.trusted_networks` (your CDN caches); others are dropped and counted as `untrusted`;
  * every probe and download connects to the cache's own resolution of the host, never to the
    address seen on the wire, so even a counted request cannot choose where the bytes come from.
Requests carrying `Authorization` are private by definition and are dropped as well.

Exactly one download per key, cluster-wide: the admitting worker must win `Catalog.claim`
(counting -> probing, a conditional UPDATE with a fresh token); only the claim holder probes and
moves the entry on (probing -> queued, guarded by its token) before sending the download job.
A worker that dies mid-way leaves a stale claim that `cachetap.schedule.reclaim` recovers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from typing import Any

import sqlalchemy as sa
from celery import shared_task
from kombu.exceptions import OperationalError as BrokerError

from cachetap.core import admission
from cachetap.core.types import Sighting
from cachetap.fetch.probe import ProbeError, probe
from cachetap.store.catalog import KEY_PATTERN
from cachetap.tasks.app import ANALYZE_BATCH, DOWNLOAD_FETCH, ROUTES, retry_countdown

log = logging.getLogger(__name__)

RETRYABLE_STATES = ("rejected", "failed")   # reconsidered once their verdict is a window old
CLAIMABLE_STATES = ("counting",)            # plus a stale `probing` claim (Catalog.claim retakes it)


@shared_task(bind=True, name=ANALYZE_BATCH)
def batch(self: Any, sightings: list[dict]) -> dict[str, int]:
    """Count one batch of sightings and act on the keys it admits; returns what happened."""
    app, settings = self.app, self.app.settings
    tally: Counter[str] = Counter(counted=0, untrusted=0, authorization=0, malformed=0,
                                  admitted=0, rejected=0, failed=0, busy=0)
    trusted = _trusted_sightings(sightings, app.resolver, settings.trusted_networks, tally)
    now = time.time()
    try:
        hits = app.catalog.record_sightings(trusted, window=settings.admission_window, now=now) if trusted else {}
    except sa.exc.OperationalError as exc:  # database unreachable or locked: nothing was counted yet
        log.warning("recording %d sightings failed (%s); retry %d", len(trusted), exc, self.request.retries + 1)
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from None
    tally["counted"] = len(trusted)
    # From here on a failure must not retry the batch (it would count twice): each key is handled
    # alone, and a claim left behind by an error is recovered by the reclaim task.
    for key, hits_in_window in sorted(hits.items()):
        if not admission.admit(hits_in_window, settings.admission_threshold):
            continue
        try:
            tally[_admit_key(app, key, now)] += 1
        except Exception:
            log.exception("admitting %s failed; its claim will be reclaimed when stale", key)
            tally["failed"] += 1
    summary = dict(tally)
    log.info("analyze batch: %s", summary)
    return summary


def _trusted_sightings(raw: list[Any], resolver: Any, trusted_networks: list, tally: Counter[str]) -> list[Sighting]:
    kept = []
    for item in raw if isinstance(raw, list) else []:
        sighting = _decode(item)
        if sighting is None:
            tally["malformed"] += 1
            log.debug("dropped malformed sighting: %.200r", item)
        elif sighting.authorization:
            tally["authorization"] += 1
            log.debug("dropped sighting with Authorization for %s", sighting.url)
        elif not admission.destination_trusted(sighting.server, resolver.addresses(sighting.host), trusted_networks):
            tally["untrusted"] += 1
            log.debug("dropped sighting of %s sent to %s: not among the host's addresses",
                      sighting.url, sighting.server)
        else:
            kept.append(sighting)
    if not isinstance(raw, list):
        tally["malformed"] += 1
    return kept


def _decode(item: Any) -> Sighting | None:
    if not isinstance(item, dict):
        return None
    try:
        sighting = Sighting.from_dict(item)
    except (KeyError, TypeError):
        return None
    ok = (isinstance(sighting.key, str) and KEY_PATTERN.fullmatch(sighting.key) is not None
          and isinstance(sighting.url, str) and sighting.url.startswith("http://")
          and isinstance(sighting.host, str) and sighting.host != ""
          and isinstance(sighting.server, str) and isinstance(sighting.client, str)
          and isinstance(sighting.ts, (int, float)) and not isinstance(sighting.ts, bool))
    return sighting if ok else None


def _admit_key(app: Any, key: str, now: float) -> str:
    """Claim, probe and queue one admitted key; returns the tally bucket for what happened."""
    settings, catalog = app.settings, app.catalog
    entry = catalog.get(key)
    if entry is None:
        return "busy"
    from_states = list(CLAIMABLE_STATES)
    if entry.state in RETRYABLE_STATES and entry.updated_at <= now - settings.admission_window:
        from_states.append(entry.state)
    elif entry.state not in ("counting", "probing"):
        return "busy"  # queued, downloading, ready, or a verdict still fresh
    token = str(uuid.uuid4())
    if not catalog.claim(key, from_states, "probing", token, now=now, stale_after=settings.claim_timeout):
        return "busy"  # another worker holds it
    try:
        result = probe(entry.url, app.resolver, settings.probe_timeout)
    except ProbeError as exc:
        log.info("probe of %s failed: %s", entry.url, exc)
        catalog.mark(key, "failed", reason=f"probe: {exc}"[:500], token=token)
        return "failed"
    verdict = app.rules.accept_probe(result)
    if verdict is not None:
        log.info("rejected %s: %s", entry.url, verdict.reason)
        catalog.set_probe(key, result, state="rejected", reason=verdict.reason, token=token)
        return "rejected"
    if not catalog.set_probe(key, result, state="queued", token=token):
        return "busy"  # the claim went stale and someone else took it
    catalog.mark(key, "queued", token=token, claimed_at=time.time())  # the download's lease starts now
    job = download_job(key, entry.url, result, token)
    try:
        app.send_task(DOWNLOAD_FETCH, args=[job], queue=ROUTES[DOWNLOAD_FETCH]["queue"])
    except BrokerError as exc:
        # The entry stays queued under this claim; reclaim re-sends it once the claim is stale.
        log.error("sending the download of %s failed (%s); reclaim will re-send it", key, exc)
    log.info("admitted %s (%s bytes)", entry.url, result.size)
    return "admitted"


def download_job(key: str, url: str, result: Any, claim: str) -> dict[str, Any]:
    """The download task's argument (see docs/internals.md)."""
    return {"key": key, "url": url, "size": result.size, "etag": result.etag,
            "last_modified": result.last_modified, "content_type": result.content_type, "claim": claim}
