"""`cachetap prefetch URL` (cache an object now, without waiting for requests) and `cachetap status`."""

from __future__ import annotations

import json
import sys
import time
import uuid

import click

from cachetap.cli.main import Context, cli, pass_ctx, setup_logging

POLL_EVERY = 0.5
FINAL_STATES = ("ready", "failed", "rejected")


@cli.command()
@click.argument("url")
@click.option("--detach", is_flag=True, help="Queue the download and return; do not show progress.")
@pass_ctx
def prefetch(ctx: Context, url: str, detach: bool) -> None:
    """Probe URL, queue its download and show progress until it is ready (or failed)."""
    from cachetap.cli.catalog_cmds import open_catalog
    from cachetap.core.keys import BadTarget, cache_key, canonical_url, host_of
    from cachetap.core.types import Sighting
    from cachetap.fetch.probe import ProbeError, probe
    from cachetap.tasks.analyze import download_job
    from cachetap.tasks.app import DOWNLOAD_FETCH, ROUTES, create_app

    settings = ctx.settings()
    setup_logging("WARNING")
    try:
        canonical = canonical_url(url, None, 80)
    except BadTarget as exc:
        raise click.ClickException(f"not a plain http:// URL cachetap can cache ({exc.reason}): {url}") from None
    key = cache_key(canonical, settings.strip_query_params)
    app = create_app(settings)
    catalog = open_catalog(settings)
    now = time.time()
    catalog.record_sightings([Sighting(ts=now, client="prefetch", client_port=0, server="", server_port=0,
                                       method="GET", host=host_of(canonical), url=canonical, key=key,
                                       target=canonical)], window=settings.admission_window, now=now)
    entry = catalog.get(key)
    if entry.state in ("queued", "downloading", "ready"):
        click.echo(f"{key} is already {entry.state}: {canonical}", err=True)
        if not detach and entry.state != "ready":
            _follow(catalog, key)
        return
    token = str(uuid.uuid4())
    # The same claim the analyze stage takes: of concurrent prefetches and admissions, one proceeds.
    if not catalog.claim(key, ["counting", "rejected", "failed"], "probing", token, now=now,
                         stale_after=settings.claim_timeout):
        raise click.ClickException(f"{key} is being probed by another worker; try again shortly")
    try:
        result = probe(canonical, app.resolver, settings.probe_timeout)
    except ProbeError as exc:
        catalog.mark(key, "failed", reason=f"probe: {exc}"[:500], token=token)
        raise click.ClickException(f"probe of {canonical} failed: {exc}") from None
    # Every probe rule applies; the extension rule does not (it judges requests, and this is asked for).
    verdict = app.rules.accept_probe(result)
    if verdict is not None:
        catalog.set_probe(key, result, state="rejected", reason=verdict.reason, token=token)
        raise click.ClickException(f"{canonical} is not cacheable: {verdict.reason}")
    catalog.set_probe(key, result, state="queued", token=token)
    catalog.mark(key, "queued", token=token, claimed_at=time.time())
    sent = app.send_task(DOWNLOAD_FETCH, args=[download_job(key, canonical, result, token)],
                         queue=ROUTES[DOWNLOAD_FETCH]["queue"])
    catalog.mark(key, "queued", token=token, task_id=sent.id)
    click.echo(sent.id)
    if not detach:
        _follow(catalog, key)


def _follow(catalog, key: str) -> None:
    """A progress bar from the catalog's bytes_done until the entry is ready or failed."""
    entry = catalog.get(key)
    length = entry.size or 0
    with click.progressbar(length=length, label=entry.filename[:40], file=sys.stderr,
                           show_pos=True) as bar:
        shown = 0
        while entry is not None and entry.state not in FINAL_STATES:
            done = min(entry.bytes_done, length)
            if done > shown:
                bar.update(done - shown)
                shown = done
            time.sleep(POLL_EVERY)
            entry = catalog.get(key)
        if entry is not None and entry.state == "ready":
            bar.update(length - shown)
    if entry is None:
        raise click.ClickException(f"{key} vanished from the catalog")
    if entry.state != "ready":
        raise click.ClickException(f"{key} {entry.state}: {entry.reason}")
    click.echo(f"ready {key} {entry.stored_size} bytes digest {entry.blob}")


@cli.command()
@click.argument("task_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status(ctx: Context, task_id: str | None, as_json: bool) -> None:
    """With TASK_ID: that task's state and result. Without: entries by state and downloads in progress."""
    settings = ctx.settings()
    if task_id:
        from celery.result import AsyncResult

        from cachetap.tasks.app import create_app

        result = AsyncResult(task_id, app=create_app(settings))
        report = {"task_id": task_id, "state": result.state}
        if result.state == "SUCCESS":
            report["result"] = result.result
        elif result.state in ("FAILURE", "RETRY"):
            report["error"] = f"{type(result.result).__name__}: {result.result}"
            if result.traceback:
                report["traceback_tail"] = result.traceback.strip().splitlines()[-1]
        if as_json:
            click.echo(json.dumps(report, default=str))
        else:
            click.echo(f"{task_id}: {result.state}")
            for name in ("result", "error", "traceback_tail"):
                if name in report:
                    click.echo(f"  {name}: {report[name] if name != 'result' else json.dumps(report[name])}")
        return
    from cachetap.cli.catalog_cmds import _size, open_catalog

    catalog = open_catalog(settings)
    counts = catalog.counts_by_state()
    active = catalog.entries(limit=1000, state="downloading") + catalog.entries(limit=1000, state="queued")
    if as_json:
        click.echo(json.dumps({"counts": counts, "active": [
            {"key": e.key, "state": e.state, "url": e.url, "bytes_done": e.bytes_done, "size": e.size,
             "speed": e.speed, "reason": e.reason} for e in active]}))
        return
    click.echo("entries: " + ", ".join(f"{state} {n}" for state, n in counts.items()))
    for e in active:
        percent = f"{100 * e.bytes_done / e.size:5.1f}%" if e.size else "    -"
        click.echo(f"{e.state:11} {e.key} {percent} {_size(e.bytes_done):>9}/{_size(e.size):<9} "
                   f"{_size(e.speed)}/s  {e.url}" + (f"  ({e.reason})" if e.reason else ""))
