"""`cachetap ls` and `cachetap db ...`: look at and maintain the catalog."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from cachetap.cli.main import Context, cli, pass_ctx
from cachetap.core.lifecycle import EntryState

if TYPE_CHECKING:
    from cachetap.settings import Settings
    from cachetap.store.catalog import Catalog


def open_catalog(settings: Settings) -> Catalog:
    """The operator's catalog (migrated first)."""
    from cachetap.privileges import prepare_cache_dir
    from cachetap.store.catalog import open_catalog as open_at

    prepare_cache_dir(settings.cache_dir, settings.run_as_user)  # the SQLite catalog and its -wal/-shm live there
    return open_at(settings.effective_database_url)


STATES = tuple(state.value for state in EntryState)


@cli.command("ls")
@click.option("--state", type=click.Choice(STATES), help="Only entries in this state.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def ls(ctx: Context, state: str | None, limit: int, as_json: bool) -> None:
    """List catalog entries, most recently requested first: hits, state, whether the cache serves
    them now (and why not), and the URL clients are sent to."""
    from cachetap.core.serving import serving
    from cachetap.core.urls import object_url
    from cachetap.web.urls import public_base_url

    settings = ctx.settings()
    catalog = open_catalog(settings)
    rows = catalog.entries(limit=limit, state=state)
    now = time.time()
    base = public_base_url(settings.public_url, settings.serve_host, settings.serve_port)
    shown = []
    for row in rows:
        verdict = serving(row.state, row.expires_at, row.claimed_at if row.claim_token else None, row.reason, now,
                          settings.revalidate_lease)
        sent_to = object_url(base, row.key, row.filename) if verdict.served else row.url
        shown.append((row, verdict, sent_to))
    if as_json:
        for row, verdict, sent_to in shown:
            click.echo(json.dumps({**_row_dict(row), "served": verdict.served, "why": verdict.why,
                                   "sent_to": sent_to}, default=str))
        return
    click.echo(f"{'KEY':32}  {'STATE':11} {'HITS':>6} {'SIZE':>10} {'LAST HIT':>9}  {'SERVED':26}  CLIENTS SENT TO")
    for row, verdict, sent_to in shown:
        ago = _ago(now - row.last_hit) if row.last_hit else "-"
        served = ("yes, " if verdict.served else "no, ") + verdict.why
        click.echo(f"{row.key:32}  {row.state:11} {row.hits:>6} {_size(row.size):>10} {ago:>9}  {served:26}  "
                   f"{sent_to}")
    counts = catalog.counts_by_state()
    click.echo("total: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"))


@cli.group()
def db() -> None:
    """Catalog database maintenance."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the catalog schema to the newest revision."""
    from cachetap.store.db import current_revision, make_engine, upgrade
    from cachetap.settings import mask_url

    url = ctx.settings().effective_database_url
    upgrade(make_engine(url))
    click.echo(f"{mask_url(url)}: at revision {current_revision(url)}")


def _row_dict(row) -> dict:
    from dataclasses import asdict, is_dataclass
    return asdict(row) if is_dataclass(row) else dict(row)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"
