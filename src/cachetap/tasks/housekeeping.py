"""Queue `schedule`: housekeeping of stored objects. Cleanup, quota, reconcile, revalidation.

Each pass is a plain function (catalog, blob store, settings, clock in; summary dict out) so that
`cachetap cleanup` runs the same code synchronously; the Celery tasks are one-line wrappers.

Revalidation needs no "stale" state: `web.lookup.CatalogLookup` refuses entries past `expires_at`,
so an expired entry is not handed out from the moment it expires until a revalidation extends it.
A requested expired entry is revalidated at once by the analyze worker that counts the request
(`revalidate_entry`); the periodic pass catches the rest. A ready entry's claim columns hold the one
revalidation in progress per key.
Outcomes: 304 or the same validators -> `expires_at` extended; changed -> evicted, and the next
requests admit it again like any new object (re-downloading on our own would fetch objects nobody
may want any more; admission already re-fetches those that are wanted); 404/410 -> evicted; error
(origin down, 5xx) -> left as it is, still not served, asked again on the next run.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from celery import shared_task

from cachetap import metrics
from cachetap.core import lifecycle
from cachetap.core.eviction import bytes_budget, cleanup_victims
from cachetap.core.freshness import revalidation_headers, revalidation_outcome
from cachetap.core.lifecycle import EntryState
from cachetap.fetch.probe import ProbeError, probe_response
from cachetap.fetch.resolver import Resolver
from cachetap.settings import Settings
from cachetap.store.blobs import BlobStore
from cachetap.store.catalog import Catalog, EntryView
from cachetap.store.disks import Disk, Disks, as_disks
from cachetap.store.evict import evict, reconcile
from cachetap.store.stats import Stats
from cachetap.tasks.app import CachetapCelery
from cachetap.tasks.beat import recorded
from cachetap.tasks.index_events import NO_INDEX, IndexNotifier
from cachetap.tasks.policy import forgetting, quota_order
from cachetap.wire import (DOWNLOAD_HOUSEKEEPING, SCHEDULE_CLEANUP, SCHEDULE_QUOTA, SCHEDULE_RECONCILE,
                           SCHEDULE_REVALIDATE, download_queue)

log = logging.getLogger(__name__)

# Headers of the stored response that still count when a 304 leaves them out.
STORED_HEADERS = (("cache_control", "cache-control"), ("last_modified", "last-modified"), ("etag", "etag"))


# ---- the passes ----------------------------------------------------------------------------------

def run_cleanup(catalog: Catalog, blobs: Disks | BlobStore, settings: Settings, now: float,
                index: IndexNotifier = NO_INDEX) -> dict[str, int]:
    """Drop entries with fewer than cleanup_min_hits hits and no request for cleanup_idle seconds."""
    removed = forgetting(catalog, settings, index.removed)   # the policy releases the key's space too
    min_hits, idle = settings.cleanup_min_hits, settings.cleanup_idle
    if min_hits <= 0:
        return {"candidates": 0, "evicted": 0}
    stats = catalog.entry_stats(lifecycle.AT_REST, fewer_hits_than=min_hits, last_hit_before=now - idle)
    states = {s.key: s.state for s in stats}
    victims = cleanup_victims(stats, now, min_hits, idle)
    evicted = sum(evict(catalog, blobs, v.key, v.reason, expect_state=states[v.key], on_removed=removed,
                        node=settings.effective_node_name, held_elsewhere=index.held_elsewhere)
                  for v in victims)
    log.info("cleanup: %d of %d entries with < %d hits idle for %ds evicted", evicted, len(victims), min_hits, idle)
    return {"candidates": len(victims), "evicted": evicted}


def run_quota(catalog: Catalog, blobs: Disks | BlobStore, settings: Settings, free_bytes: int | None = None,
              index: IndexNotifier = NO_INDEX, now: float | None = None) -> dict[str, int]:
    """Evict ready entries in the eviction policy's order until the stored bytes fit disk_quota and,
    on a node with one disk, its min_free_bytes are free; then, disk by disk, the policy's victims
    among the objects of a disk over its own quota or under its min_free_bytes (`free_bytes`
    overrides the measurement of every disk)."""
    removed = forgetting(catalog, settings, index.removed)   # the policy releases the key's space too
    disks = as_disks(blobs, settings.min_free_bytes)
    rooms = [(d, None if not d.usable() else d.free() if free_bytes is None else free_bytes) for d in disks]
    used = catalog.stored_bytes()
    free = sum(f or 0 for _, f in rooms)
    one = rooms[0][0] if len(rooms) == 1 else None
    budget = bytes_budget(used, settings.disk_quota, free, one.min_free if one else 0)
    evicted, freed = 0, 0
    if used > budget:
        for key in quota_order(catalog, settings, used - budget, time.time() if now is None else now):
            entry = catalog.get(key)
            if entry is None or entry.state != EntryState.READY:
                continue   # a reservation for a download still running: nothing on disk to free yet
            if evict(catalog, disks, key, "quota", expect_state=EntryState.READY, on_removed=removed,
                     node=settings.effective_node_name, held_elsewhere=index.held_elsewhere):
                evicted += 1
                freed += entry.stored_size or 0
        log.warning("quota: %d bytes stored, %d allowed (quota %d, %d free, keep %d free): %d entries evicted, "
                    "%d bytes", used, budget, settings.disk_quota, free, settings.min_free_bytes, evicted, freed)
    for disk, disk_free in rooms:
        if disk_free is None or (one is not None and not disk.quota):
            continue  # not usable now (its objects are out of service anyway), or done above
        n, nbytes = _disk_quota(catalog, disks, disk, disk_free, settings, removed, now)
        evicted, freed = evicted + n, freed + nbytes
    objects, stored = Stats(catalog).ready_totals()
    metrics.store().measured(objects, stored, settings.disk_quota, free + freed)
    return {"used": used, "budget": budget, "free": free, "evicted": evicted, "freed": freed}


def _disk_quota(catalog: Catalog, disks: Disks, disk: Disk, free: int, settings: Settings,
                removed: Callable[[str], None], now: float | None = None) -> tuple[int, int]:
    """One disk over its quota or under its min_free: the eviction policy's victims among that
    disk's objects go, in the policy's order (as for disk_quota, restricted to the disk)."""
    node = settings.effective_node_name
    used = catalog.stored_bytes(disk=disk.label, default_disk=disks.default, node=node)
    excess = used - bytes_budget(used, disk.quota, free, disk.min_free)
    if excess <= 0:
        return 0, 0
    evicted, freed = 0, 0
    for key in quota_order(catalog, settings, excess, time.time() if now is None else now,
                           disk=(disk.label, disks.default, node)):
        entry = catalog.get(key)
        if entry is None or entry.state != EntryState.READY:
            continue
        if evict(catalog, disks, key, "quota", expect_state=EntryState.READY, on_removed=removed):
            evicted, freed = evicted + 1, freed + (entry.stored_size or 0)
        if freed >= excess:
            break
    if evicted:
        log.warning("quota: disk %s holds %d bytes (its quota %d, %d free, keep %d free): %d entries evicted, "
                    "%d bytes", disk.label, used, disk.quota, free, disk.min_free, evicted, freed)
    return evicted, freed


def run_reconcile(catalog: Catalog, blobs: Disks | BlobStore, settings: Settings, now: float,
                  index: IndexNotifier = NO_INDEX) -> dict[str, int]:
    removed = forgetting(catalog, settings, index.removed)   # the policy releases the key's space too
    report = reconcile(catalog, as_disks(blobs, settings.min_free_bytes), now, settings.reconcile_grace,
                       on_removed=removed, node=settings.effective_node_name)
    log.info("reconcile: %s", report.summary())
    return report.summary()


def run_revalidate(catalog: Catalog, blobs: Disks | BlobStore, resolver: Resolver, settings: Settings,
                   now: float, index: IndexNotifier = NO_INDEX) -> dict[str, int]:
    """Conditional HEAD of up to revalidate_batch expired ready entries (see the module doc)."""
    done = {"checked": 0, "fresh": 0, "changed": 0, "gone": 0, "error": 0, "busy": 0}
    for entry in catalog.expired(now, settings.revalidate_batch):
        done["checked"] += 1
        done[revalidate_entry(catalog, blobs, resolver, settings, entry, now, index)] += 1
    return done


def revalidate_entry(catalog: Catalog, blobs: Disks | BlobStore, resolver: Resolver, settings: Settings, entry: EntryView,
                     now: float, index: IndexNotifier = NO_INDEX) -> str:
    """One conditional HEAD of an expired ready entry under its revalidation claim (one per key at a
    time, across workers); returns the outcome, or "busy" when another worker is on it."""
    token = str(uuid.uuid4())
    if not catalog.begin_revalidation(entry.key, token, now, settings.revalidate_lease):
        return "busy"
    outcome, reason, headers = _revalidate_one(entry, resolver, settings)
    if outcome == "fresh":
        stored = {name: getattr(entry, field) for field, name in STORED_HEADERS if getattr(entry, field)}
        answered = time.time()
        until = settings.refresh_policy().fresh_until(answered, {**stored, **headers}, entry.host,
                                                      urlsplit(entry.url).path)
        if entry.blob and catalog.refresh(entry.key, entry.blob, until, headers.get("cache-control")):
            index.ready(entry.key, until, entry.node)  # capture nodes dropped it when it expired
            log.info("revalidated %s (%s): fresh for %.0fs more", entry.key, reason, until - answered)
            return outcome
    elif outcome in ("changed", "gone"):
        removed = forgetting(catalog, settings, index.removed)  # the policy releases the key's space too
        if evict(catalog, blobs, entry.key, outcome, expect_state=EntryState.READY, on_removed=removed,
                 node=settings.effective_node_name, held_elsewhere=index.held_elsewhere):
            log.info("revalidated %s (%s): %s, evicted: %s", entry.key, reason, outcome, entry.url)
            return outcome
    else:
        log.warning("revalidation of %s failed (%s): not served until it succeeds: %s", entry.key, reason,
                    entry.url)
    catalog.end_revalidation(entry.key, token, None if outcome == "fresh" else f"revalidation: {reason}")
    return outcome


def _revalidate_one(entry: EntryView, resolver: Resolver, settings: Settings) -> tuple[str, str, dict[str, str]]:
    """(outcome, reason, response headers) of one conditional HEAD."""
    try:
        status, headers = probe_response(entry.url, resolver, settings.probe_timeout,
                                         revalidation_headers(entry.etag, entry.last_modified))
    except ProbeError as exc:
        return "error", exc.reason, {}
    old_size = entry.stored_size if entry.stored_size is not None else entry.size
    outcome = revalidation_outcome(status, entry.etag, headers.get("etag"), old_size,
                                   _content_length(headers.get("content-length")), entry.last_modified,
                                   headers.get("last-modified"))
    return outcome, f"HTTP {status}", headers


def purge_key(catalog: Catalog, blobs: Disks | BlobStore, settings: Settings, key: str,
              index: IndexNotifier = NO_INDEX) -> tuple[EntryView | None, str]:
    """Remove one object by hand (`cachetap purge`, the console): its row, its policy record, its
    file unless another entry shares it; capture nodes are told at once. Returns the entry removed
    (None when there was none) and what became of the file ("deleted", "kept", "elsewhere": on a
    disk this node does not have or cannot use now, or "none")."""
    entry = catalog.get(key)
    removed = forgetting(catalog, settings, index.removed)  # the policy's space too
    disks = as_disks(blobs, settings.min_free_bytes)
    if entry is None or not evict(catalog, disks, key, "purge", on_removed=removed,
                                  node=settings.effective_node_name, held_elsewhere=index.held_elsewhere):
        return None, "none"
    if not entry.blob:
        return entry, "none"
    store = disks.store(entry.disk)
    if store is None or entry.node not in (None, settings.effective_node_name):
        return entry, "elsewhere"
    return entry, "kept" if store.exists(entry.blob) else "deleted"


def revalidate_now(catalog: Catalog, blobs: Disks | BlobStore, resolver: Resolver, settings: Settings, entry: EntryView,
                   index: IndexNotifier = NO_INDEX) -> str:
    """An operator's "revalidate now" of a ready entry, fresh or not: `revalidate_entry` as if its
    freshness ended this moment (the clock given is at least its expiry, so the claim is taken)."""
    return revalidate_entry(catalog, blobs, resolver, settings, entry, max(time.time(), entry.expires_at or 0.0), index)


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def run_all(catalog: Catalog, blobs: Disks | BlobStore, resolver: Resolver, settings: Settings,
            now: float | None = None, index: IndexNotifier = NO_INDEX) -> dict[str, dict[str, int]]:
    """The four passes once, in the order that frees the most first (`cachetap cleanup`)."""
    now = time.time() if now is None else now
    return {
        "revalidate": run_revalidate(catalog, blobs, resolver, settings, now, index),
        "cleanup": run_cleanup(catalog, blobs, settings, now, index),
        "reconcile": run_reconcile(catalog, blobs, settings, now, index),
        "quota": run_quota(catalog, blobs, settings, index=index),
    }


# ---- beat tasks ----------------------------------------------------------------------------------

def _blobs(app: CachetapCelery) -> Disks:
    return app.disks


@shared_task(bind=True, name=SCHEDULE_CLEANUP)
def cleanup(self: Any) -> dict[str, int] | None:
    app = self.app
    return recorded(app, SCHEDULE_CLEANUP, lambda: run_cleanup(app.catalog, _blobs(app), app.settings, time.time(),
                                                               IndexNotifier(app)), app.settings.housekeeping_interval)


@shared_task(bind=True, name=SCHEDULE_QUOTA)
def quota(self: Any) -> dict[str, int] | None:
    app = self.app
    return recorded(app, SCHEDULE_QUOTA, lambda: run_quota(app.catalog, _blobs(app), app.settings,
                                                           index=IndexNotifier(app)), app.settings.housekeeping_interval)


@shared_task(bind=True, name=SCHEDULE_RECONCILE)
def reconcile_store(self: Any) -> dict[str, Any] | None:
    """Files and rows are each node's own: every live cache node reconciles its disks (and keeps
    their own quotas) in its download worker; with no node registered (one box) it runs here."""
    app = self.app
    return recorded(app, SCHEDULE_RECONCILE, lambda: _on_every_cache_node(app), app.settings.housekeeping_interval)


def _on_every_cache_node(app: CachetapCelery) -> dict[str, Any]:
    from cachetap.tasks.placing import live_cache_members

    nodes = [m.name for m in live_cache_members(app, time.time())]
    if not nodes:
        return node_housekeeping(app)
    for node in nodes:
        app.send_task(DOWNLOAD_HOUSEKEEPING, args=[], queue=download_queue(node))
    return {"nodes": len(nodes)}


def node_housekeeping(app: CachetapCelery) -> dict[str, Any]:
    """This node's reconcile and the quotas of its own disks."""
    settings, disks = app.settings, _blobs(app)
    summary: dict[str, Any] = run_reconcile(app.catalog, disks, settings, time.time(), IndexNotifier(app))
    removed = forgetting(app.catalog, settings, IndexNotifier(app).removed)
    for disk in disks:
        free = disk.free() if disk.usable() else None
        if free is not None and (disk.quota or disk.min_free):
            _disk_quota(app.catalog, disks, disk, free, settings, removed)
    return summary


@shared_task(bind=True, name=DOWNLOAD_HOUSEKEEPING)
def housekeeping_here(self: Any) -> dict[str, Any] | None:
    app = self.app
    return recorded(app, f"{DOWNLOAD_HOUSEKEEPING}@{app.settings.effective_node_name}"[:64],
                    lambda: node_housekeeping(app), app.settings.housekeeping_interval)


@shared_task(bind=True, name=SCHEDULE_REVALIDATE)
def revalidate(self: Any) -> dict[str, int] | None:
    app = self.app
    return recorded(app, SCHEDULE_REVALIDATE, lambda: run_revalidate(app.catalog, _blobs(app), app.resolver, app.settings,
                                                                     time.time(), IndexNotifier(app)),
                    app.settings.revalidate_interval)
