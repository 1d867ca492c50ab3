"""`cachetap prefetch URL` (cache an object now, without waiting for requests) and `cachetap status`."""

from __future__ import annotations

import json
import sys
import time

import click

from cachetap.cli.main import Context, cli, pass_ctx, setup_logging
from cachetap.core import lifecycle
from cachetap.core.lifecycle import EntryState

POLL_EVERY = 0.5
# What to change when the probe rejects an object the operator asked for by name.
PROBE_FIXES = {
    "too_small": ("min_size", "{size} bytes is below min_size ({limit} bytes); to cache it lower min_size, "
                              "e.g. CACHETAP_MIN_SIZE={size}"),
    "too_large": ("max_size", "{size} bytes is above max_size ({limit} bytes); to cache it raise max_size, "
                              "e.g. CACHETAP_MAX_SIZE={size}"),
    "content_type": ("content_types", "its type {ctype!r} is not among content_types; add it there"),
}


def _fix(reason: str, entry, settings) -> str:
    if reason not in PROBE_FIXES or entry is None:
        return ""
    name, text = PROBE_FIXES[reason]
    return " (" + text.format(size=entry.size, limit=getattr(settings, name), ctype=entry.content_type) + ")"


@cli.command()
@click.argument("url")
@click.option("--detach", is_flag=True, help="Queue the download and return; do not show progress.")
@pass_ctx
def prefetch(ctx: Context, url: str, detach: bool) -> None:
    """Probe URL, queue its download and show progress until it is ready (or failed)."""
    from cachetap.cli.catalog_cmds import open_catalog
    from cachetap.settings import mask_url
    from cachetap.tasks.admit import ADMITTED
    from cachetap.tasks.app import create_app
    from cachetap.tasks.prefetch import ALREADY, BROKER_DOWN, NotCacheable, prefetch_url

    settings = ctx.settings()
    setup_logging("WARNING")
    app = create_app(settings)
    try:
        done = prefetch_url(app, url)
    except NotCacheable as exc:
        raise click.ClickException(f"not a plain http:// URL cachetap can cache ({exc.reason}): {url}") from None
    catalog, key, canonical = open_catalog(settings), done.key, done.url
    if done.outcome == ALREADY:
        click.echo(f"{key} is already {done.state}: {canonical}", err=True)
        if not detach and done.state != EntryState.READY:
            _follow(catalog, key)
        return
    if done.outcome == BROKER_DOWN:
        raise click.ClickException(f"cannot reach the broker at {mask_url(settings.effective_broker_url)} "
                                   f"({done.reason}); start it or fix broker_url, then run prefetch again")
    if done.outcome == EntryState.FAILED:
        raise click.ClickException(f"probe of {canonical} failed: {(done.reason or '').removeprefix('probe: ')}")
    if done.outcome == EntryState.REJECTED:
        reason = done.reason or ""
        raise click.ClickException(f"{canonical} is not cacheable: {reason}{_fix(reason, catalog.get(key), settings)}")
    if done.outcome != ADMITTED:
        raise click.ClickException(f"{key} is being probed by another worker; try again shortly")
    click.echo(done.task_id)
    if not detach:
        _follow(catalog, key)


def _follow(catalog, key: str) -> None:
    """A progress bar from the catalog's bytes_done until the entry is ready or failed."""
    entry = catalog.get(key)
    length = entry.size or 0
    with click.progressbar(length=length, label=entry.filename[:40], file=sys.stderr,
                           show_pos=True) as bar:
        shown = 0
        while entry is not None and entry.state not in lifecycle.SETTLED:
            done = min(entry.bytes_done, length)
            if done > shown:
                bar.update(done - shown)
                shown = done
            time.sleep(POLL_EVERY)
            entry = catalog.get(key)
        if entry is not None and entry.state == EntryState.READY:
            bar.update(length - shown)
    if entry is None:
        raise click.ClickException(f"{key} vanished from the catalog")
    if entry.state != EntryState.READY:
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
        from cachetap.tasks.app import create_app
        from cachetap.tasks.report import NotATaskId, task_report

        try:
            report = task_report(create_app(settings), task_id)
        except NotATaskId:
            raise click.ClickException(f"{task_id!r} is not a task id (prefetch prints one, like "
                                       "1b4e28ba-2fa1-11d2-883f-0016d3cca427)") from None
        if report is None:
            raise click.ClickException(f"{task_id}: unknown (no prefetch or download with this id is known; "
                                       "results are kept for 6 hours)")
        if as_json:
            click.echo(json.dumps(report, default=str))
        else:
            click.echo(f"{task_id}: {report['state']}")
            for name in ("result", "error", "traceback_tail"):
                if name in report:
                    click.echo(f"  {name}: {report[name] if name != 'result' else json.dumps(report[name])}")
        return
    from cachetap.cli.catalog_cmds import _size, open_catalog

    catalog = open_catalog(settings)
    counts = catalog.counts_by_state()
    active = (catalog.entries(limit=1000, state=EntryState.DOWNLOADING)
              + catalog.entries(limit=1000, state=EntryState.QUEUED))
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
