"""Queue `analyze`: count sightings, admit popular keys, probe them once, queue one download each.

Poisoning rule. A client decides both the Host header and the address it sends a request to, so
it could send `Host: cdn.example.com` to a server it controls and, if we trusted the wire, make
us count requests for (and later redirect everyone to) bytes of its choosing. Therefore:
  * a sighting counts only when its observed destination address is among the cache's *own* DNS
    answers for the Host (`fetch.resolver.Resolver`, overrides first) or inside
    `settings.trusted_networks` (your CDN caches); others are dropped and counted as `untrusted`;
  * every probe and download connects to the cache's own resolution of the host, never to the
    address seen on the wire, so even a counted request cannot choose where the bytes come from.
  * the port the request names (Host or absolute target) must be the port it was sent to, or a
    request sent to port 80 could make us fetch `Host: example.org:6379` (dropped as `port_mismatch`);
  * and whatever is counted, probes and downloads connect only to addresses the fetch guard allows
    (`core.egress`: no loopback, own, private... addresses unless in `fetch_allow_networks`).
Requests carrying `Authorization` are private by definition and are dropped as well.

Each admitted key then goes through `tasks.admit.admit` (claim, probe, queue: exactly one download
per key, cluster-wide), the path `cachetap prefetch` takes as well.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import sqlalchemy as sa
from celery import shared_task

from cachetap import metrics
from cachetap.core import admission, egress
from cachetap.core.lifecycle import EntryState
from cachetap.core.types import Sighting
from cachetap.fetch.resolver import Resolver
from cachetap.store.stats import Stats
from cachetap.tasks.admit import admit_key
from cachetap.tasks.app import retry_countdown
from cachetap.tasks.housekeeping import revalidate_entry
from cachetap.tasks.index_events import IndexNotifier
from cachetap.tasks.policy import note_requests
from cachetap.tasks.rehome import rehome_requested
from cachetap.wire import ANALYZE_BATCH, decode_sighting

log = logging.getLogger(__name__)

# What becomes of a sighting: counted, or dropped for one of the reasons in the module doc.
SIGHTING_OUTCOMES = ("counted", "untrusted", "port_mismatch", "authorization", "malformed")


@shared_task(bind=True, name=ANALYZE_BATCH)
def batch(self: Any, sightings: list[dict]) -> dict[str, int]:
    """Count one batch of sightings and act on the keys it admits; returns what happened."""
    app, settings = self.app, self.app.settings
    tally: Counter[str] = Counter(dict.fromkeys(SIGHTING_OUTCOMES, 0), admitted=0, rejected=0, failed=0, busy=0)
    trusted = _trusted_sightings(sightings, app.resolver, settings.trusted_networks, tally)
    now = time.time()
    try:
        hits = app.catalog.record_sightings(trusted, window=settings.admission_window, now=now) if trusted else {}
    except sa.exc.OperationalError as exc:  # database unreachable or locked: nothing was counted yet
        log.warning("recording %d sightings failed (%s); retry %d", len(trusted), exc, self.request.retries + 1)
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from None
    tally["counted"] = len(trusted)
    _count_requests(app, trusted, now)
    note_requests(app, sorted(hits), now)
    # From here on a failure must not retry the batch (it would count twice): each key is handled
    # alone, and a claim left behind by an error is recovered by the reclaim task.
    for key, hits_in_window in sorted(hits.items()):
        if not admission.admit(hits_in_window, settings.admission_threshold):
            continue
        try:
            tally[admit_key(app, key, now).outcome] += 1
        except Exception:
            log.exception("admitting %s failed; its claim will be reclaimed when stale", key)
            tally[EntryState.FAILED] += 1
    _revalidate_requested(app, list(hits), tally)
    try:
        rehome_requested(app, sorted(hits), now, tally)
    except Exception:  # the object stays where it is; its next request tries again
        log.exception("re-homing requested objects failed")
    summary = dict(tally)
    sightings = metrics.analyze().sightings
    for outcome in SIGHTING_OUTCOMES:
        if summary[outcome]:
            sightings.labels(outcome).inc(summary[outcome])
    log.info("analyze batch: %s", summary)
    return summary


def _count_requests(app: Any, sightings: list[Sighting], now: float) -> None:
    """The console's requests and missed bytes; a failure costs figures, never the batch."""
    try:
        missed = Stats(app.catalog).count_requests(Counter(s.key for s in sightings), now)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("request figures of %d sightings not recorded: %s", len(sightings), exc)
        return
    if missed:
        metrics.analyze().missed_bytes.inc(missed)


def _revalidate_requested(app: Any, keys: list[str], tally: Counter[str]) -> None:
    """Requested ready entries past their freshness are revalidated now, not at the next periodic
    pass: until then clients go to the origin. One conditional request per key at a time (a
    catalog claim); a 304 puts the key back into every capture's redirect index."""
    if not keys:
        return
    try:
        expired = app.catalog.expired_among(keys, time.time())
    except sa.exc.OperationalError as exc:
        log.warning("looking up expired entries failed: %s; the periodic pass revalidates them", exc)
        return
    for entry in expired:
        try:
            outcome = revalidate_entry(app.catalog, app.disks, app.resolver, app.settings,
                                       entry, time.time(), IndexNotifier(app))
        except Exception:
            log.exception("revalidating %s failed; the periodic pass tries again", entry.key)
            outcome = "error"
        tally[f"revalidated_{outcome}"] += 1


def _trusted_sightings(raw: list[Any], resolver: Resolver, trusted_networks: list,
                       tally: Counter[str]) -> list[Sighting]:
    kept = []
    for item in raw if isinstance(raw, list) else []:
        sighting = decode_sighting(item)
        if sighting is None:
            tally["malformed"] += 1
            log.debug("dropped malformed sighting: %.200r", item)
        elif sighting.authorization:
            tally["authorization"] += 1
            log.debug("dropped sighting with Authorization for %s", sighting.url)
        elif not egress.port_matches(sighting.url, sighting.server_port):
            tally["port_mismatch"] += 1
            log.debug("dropped sighting of %s sent to port %s", sighting.url, sighting.server_port)
        elif not admission.destination_trusted(sighting.server, resolver.addresses(sighting.host), trusted_networks):
            tally["untrusted"] += 1
            log.debug("dropped sighting of %s sent to %s: not among the host's addresses",
                      sighting.url, sighting.server)
        else:
            kept.append(sighting)
    if not isinstance(raw, list):
        tally["malformed"] += 1
    return kept
