"""The admin API: JSON for everything the console shows and does (the pages use nothing else).

Actions take the code paths the CLI takes: `tasks.prefetch.prefetch_url` (prefetch and retry),
`tasks.housekeeping.purge_key` and `revalidate_now`, `tasks.report.task_report`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from cachetap.console import figures
from cachetap.core.keys import KEY_PATTERN
from cachetap.core.lifecycle import EntryState
from cachetap.store.disks import Disks
from cachetap.tasks.housekeeping import purge_key, revalidate_now
from cachetap.tasks.index_events import IndexNotifier
from cachetap.tasks.prefetch import NotCacheable, Prefetched, prefetch_url
from cachetap.tasks.report import NotATaskId, queue_depths, task_report, workers


bearer_scheme = HTTPBearer(auto_error=False, description="The admin token; reads from loopback need none.")


def _documented_auth(_: object = Security(bearer_scheme)) -> None:
    """Shows the Bearer scheme in the OpenAPI document; the check itself is auth.Guard's."""


class PrefetchRequest(BaseModel):
    url: str = Field(..., max_length=8192, description="An http:// URL to cache now.")


def prefetched(done: Prefetched) -> dict[str, Any]:
    return {"key": done.key, "url": done.url, "outcome": done.outcome, "state": done.state,
            "reason": done.reason, "task_id": done.task_id}


def build_router() -> APIRouter:
    """Every route here is behind `auth.Guard` (a middleware of app.py, run before the body is read)."""
    read = write = [Depends(_documented_auth)]
    api = APIRouter(prefix="/api")

    def celery(request: Request):
        return request.app.state.celery

    def entry_of(request: Request, key: str):
        entry = celery(request).catalog.get(key) if KEY_PATTERN.fullmatch(key) else None
        if entry is None:
            raise HTTPException(404, f"{key}: not in the catalog")
        return entry

    @api.get("/overview", dependencies=read, summary="Bytes saved, hit ratio, rates, store and states")
    def overview(request: Request) -> dict[str, Any]:
        return figures.overview(celery(request))

    @api.get("/series", dependencies=read, summary="Chart points: day (minutes) or month (hours)")
    def series(request: Request, range: Literal["day", "month"] = "day") -> dict[str, Any]:  # noqa: A002
        return figures.series(celery(request), range)

    @api.get("/downloads", dependencies=read, summary="Queued and running downloads, recent failures")
    def downloads(request: Request) -> dict[str, Any]:
        return figures.downloads(celery(request))

    @api.get("/catalog", dependencies=read, summary="Entries by URL or host, sorted")
    def catalog(request: Request, q: str = Query("", max_length=512),
                sort: Literal["hits", "size", "last_hit", "saved"] = "last_hit",
                limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        return figures.catalog(celery(request), q, sort, limit)

    @api.get("/entries/{key}", dependencies=read, summary="One entry")
    def entry(request: Request, key: str) -> dict[str, Any]:
        app = celery(request)
        return figures.entry_json(entry_of(request, key), app.settings, figures.base_url(app.settings), time.time())

    @api.get("/hosts", dependencies=read, summary="Top hosts by bytes saved and by bytes missed")
    def hosts(request: Request, limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
        return figures.hosts(celery(request), limit)

    @api.get("/nodes", dependencies=read, summary="Nodes (registry), workers, queue depths, beat's runs")
    def nodes(request: Request) -> dict[str, Any]:
        app = celery(request)
        registry = figures.nodes(app)
        caches = [n["name"] for n in registry["nodes"] if n["live"] and "cache" in n["roles"]]
        try:
            found, depths, error = workers(app), queue_depths(app, caches), None
        except Exception as exc:  # broker down: say so, keep the page alive
            found, depths, error = [], {}, f"broker unreachable: {exc}"
        return {**registry, "workers": found, "queues": depths, "error": error}

    @api.get("/tasks/{task_id}", dependencies=read, summary="A task's state and result (AsyncResult)")
    def task(request: Request, task_id: str) -> dict[str, Any]:
        try:
            report = task_report(celery(request), task_id)
        except NotATaskId:
            raise HTTPException(400, f"{task_id[:64]!r} is not a task id") from None
        if report is None:
            raise HTTPException(404, f"{task_id}: unknown (results are kept for 6 hours)")
        return report

    @api.post("/prefetch", dependencies=write, summary="Probe a URL and queue its download")
    def prefetch(request: Request, body: PrefetchRequest) -> dict[str, Any]:
        try:
            return prefetched(prefetch_url(celery(request), body.url))
        except NotCacheable as exc:
            raise HTTPException(400, f"not a plain http:// URL cachetap can cache ({exc.reason})") from None

    @api.post("/entries/{key}/retry", dependencies=write, summary="Prefetch a failed entry again")
    def retry(request: Request, key: str) -> dict[str, Any]:
        return prefetched(prefetch_url(celery(request), entry_of(request, key).url))

    @api.post("/entries/{key}/purge", dependencies=write, summary="Remove an entry and its file")
    def purge(request: Request, key: str) -> dict[str, Any]:
        app = celery(request)
        entry_of(request, key)
        removed, file = purge_key(app.catalog, Disks.from_settings(app.settings), app.settings, key, IndexNotifier(app))
        if removed is None:
            raise HTTPException(404, f"{key}: not in the catalog")
        return {"key": key, "removed": True, "state": removed.state, "file": file}

    @api.post("/entries/{key}/revalidate", dependencies=write, summary="Ask the origin now whether it changed")
    def revalidate(request: Request, key: str) -> dict[str, Any]:
        app = celery(request)
        entry = entry_of(request, key)
        if entry.state != EntryState.READY:
            raise HTTPException(409, f"{key} is {entry.state}: only ready entries are revalidated")
        outcome = revalidate_now(app.catalog, Disks.from_settings(app.settings), app.resolver, app.settings,
                                 entry, IndexNotifier(app))
        return {"key": key, "outcome": outcome}

    return api
