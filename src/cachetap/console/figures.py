"""What the console shows, as JSON-ready dicts: read from the catalog (store/stats.py) and Celery.

Every figure the page shows comes from here through the API, so the page and the API cannot disagree.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from cachetap.core.lifecycle import EntryState
from cachetap.core.serving import serving
from cachetap.core.urls import object_url
from cachetap.store.catalog import EntryView
from cachetap.store.stats import HOUR, MINUTE, Stats, disk_free
from cachetap.web.urls import public_base_url

RANGES = {"day": (MINUTE, 86_400), "month": (HOUR, 30 * 86_400)}
RECENT = 600  # seconds a finished download stays on the Downloads page
RATE_WINDOW = 300  # seconds of whole minutes the per-second rates average over


def local_midnight(now: float) -> float:
    """Start of today in the server's time zone (the hour buckets hold whole hours)."""
    today = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return today.timestamp()


def savings(totals: dict[str, int]) -> dict[str, Any]:
    """Bytes saved (served minus origin bytes spent filling), gross (served), and the byte hit ratio
    (served over served plus missed: what clients got from us among what we saw them fetch)."""
    served, fetched, missed = totals["served_bytes"], totals["fetched_bytes"], totals["missed_bytes"]
    seen = served + missed
    return {"saved_bytes": served - fetched, "gross_bytes": served, "fetched_bytes": fetched,
            "missed_bytes": missed, "served_requests": totals["served_requests"], "requests": totals["requests"],
            "byte_hit_ratio": round(served / seen, 4) if seen else None}


def overview(app, now: float | None = None) -> dict[str, Any]:
    settings, stats = app.settings, Stats(app.catalog)
    now = time.time() if now is None else now
    periods = {"today": local_midnight(now), "week": (now - 7 * 86_400) // HOUR * HOUR, "all": None}
    gauges = stats.latest_gauges()
    counts = app.catalog.counts_by_state()
    objects, stored = stats.ready_totals()
    return {
        "generated_at": now,
        "savings": {name: savings(stats.totals(since)) for name, since in periods.items()},
        "rates": {"requests_per_s": round(stats.rate("requests", RATE_WINDOW, now), 3),
                  "served_per_s": round(stats.rate("served_requests", RATE_WINDOW, now), 3),
                  "window_s": RATE_WINDOW, **capture_rates(app, now)},
        "store": {"objects": objects, "stored_bytes": stored, "quota_bytes": settings.disk_quota or None,
                  "disk_free_bytes": disk_free(app.catalog, settings.cache_dir, settings.node_heartbeat_interval, now)},
        "states": counts,
        "beat_last_sample": gauges.get("bucket"),
    }


def capture_rates(app, now: float) -> dict[str, float | None]:
    """GETs and redirects per second summed over the live capture nodes' last heartbeat reports
    (None with no live capture node: nothing to sum)."""
    from cachetap.store.nodes import liveness_window

    window = liveness_window(app.settings.node_heartbeat_interval)
    reports = [node.reports.get("capture") or {} for node in app.catalog.nodes.live(now, window, role="capture")]
    if not reports:
        return {"capture_gets_per_s": None, "redirects_per_s": None}
    return {"capture_gets_per_s": round(sum(r.get("gets_per_s", 0) for r in reports), 2),
            "redirects_per_s": round(sum(r.get("redirects_per_s", 0) for r in reports), 2)}


def series(app, which: str, now: float | None = None) -> dict[str, Any]:
    period, span = RANGES[which]
    now = time.time() if now is None else now
    points = Stats(app.catalog).series(period, now - span)
    return {"range": which, "period": period, "since": now - span, "points": points}


def entry_json(entry: EntryView, settings, base_url: str, now: float) -> dict[str, Any]:
    verdict = serving(entry.state, entry.expires_at, entry.claimed_at if entry.claim_token else None,
                      entry.reason, now, settings.revalidate_lease)
    return {
        "key": entry.key, "url": entry.url, "host": entry.host, "filename": entry.filename,
        "state": entry.state, "reason": entry.reason, "served": verdict.served, "freshness": verdict.why,
        "expires_at": entry.expires_at, "hits": entry.hits, "size": entry.size, "stored_size": entry.stored_size,
        "last_hit": entry.last_hit, "served_bytes": entry.served_bytes, "fetched_bytes": entry.fetched_bytes,
        "saved_bytes": entry.served_bytes - entry.fetched_bytes, "missed_bytes": entry.missed_bytes,
        "cache_url": object_url(base_url, entry.key, entry.filename) if entry.state == EntryState.READY else None,
        "task_id": entry.task_id, "updated_at": entry.updated_at,
    }


def base_url(settings) -> str:
    return public_base_url(settings.public_url, settings.serve_host, settings.serve_port)


def catalog(app, text: str = "", sort: str = "last_hit", limit: int = 100) -> dict[str, Any]:
    settings, now = app.settings, time.time()
    found = Stats(app.catalog).find(text, sort, limit=limit)
    url = base_url(settings)
    return {"query": text, "sort": sort, "entries": [entry_json(e, settings, url, now) for e in found]}


def download_json(entry: EntryView) -> dict[str, Any]:
    """Progress as the download task's heartbeat left it (aria2's figures, renewed every second)."""
    size, done, speed = entry.size, min(entry.bytes_done, entry.size or entry.bytes_done), entry.speed
    return {"key": entry.key, "url": entry.url, "host": entry.host, "filename": entry.filename, "state": entry.state,
            "size": size, "bytes_done": done, "percent": round(100 * done / size, 1) if size else None,
            "speed": speed, "eta_s": round((size - done) / speed, 1) if size and speed else None,
            "reason": entry.reason, "task_id": entry.task_id, "updated_at": entry.updated_at}


def downloads(app, failures: int = 20, now: float | None = None) -> dict[str, Any]:
    """Running and queued downloads, the ones finished in the last RECENT seconds (their bars at
    100%), and the latest failures."""
    stats, now = Stats(app.catalog), time.time() if now is None else now
    active = (stats.find(state=EntryState.DOWNLOADING, sort="updated", limit=200)
              + stats.find(state=EntryState.QUEUED, sort="updated", limit=200))
    finished = [e for e in stats.find(state=EntryState.READY, sort="published", limit=20)
                if e.published_at and e.published_at >= now - RECENT]
    failed = stats.find(state=EntryState.FAILED, sort="updated", limit=failures)
    return {"active": [download_json(e) for e in active], "finished": [download_json(e) for e in finished],
            "failures": [{"key": e.key, "url": e.url, "host": e.host, "reason": e.reason,
                          "updated_at": e.updated_at, "attempts": e.attempts} for e in failed]}


def hosts(app, limit: int = 20) -> dict[str, Any]:
    stats = Stats(app.catalog)
    return {"by_saved": stats.hosts("saved", limit), "by_missed": stats.hosts("missed", limit)}


def nodes(app, now: float | None = None) -> dict[str, Any]:
    """The node registry (every node's roles, cache URL, disks and its processes' reports), who holds
    the beat lease, and when each scheduled task last started."""
    from cachetap.store.leases import Leases, TaskRuns
    from cachetap.store.nodes import liveness_window
    from cachetap.tasks.app import beat_schedule
    from cachetap.tasks.beat import BEAT_LEASE

    settings, catalog = app.settings, app.catalog
    now = time.time() if now is None else now
    found = catalog.nodes.nodes(now, liveness_window(settings.node_heartbeat_interval))
    tasks = sorted({entry["task"] for entry in beat_schedule(settings).values()})
    return {"nodes": [node.to_dict() for node in found],
            "beat": {"holder": Leases(catalog).holder(BEAT_LEASE, now),
                     "last_started": TaskRuns(catalog).last_started(tasks)}}
