"""`cachetap purge KEY|URL` and `cachetap cleanup`: remove stored objects by hand or on cron."""

from __future__ import annotations

import json

import click

from cachetap.cli.catalog_cmds import open_catalog
from cachetap.cli.main import Context, cli, pass_ctx, setup_logging
from cachetap.core.keys import KEY_PATTERN


def resolve_key(target: str, strip: dict[str, list[str]]) -> tuple[str, str | None]:
    """(cache key, canonical URL or None) for a key or an http:// URL, with the same canonical
    form and query-stripping rules the capture applies; click.BadParameter when it is neither."""
    from cachetap.core.keys import BadTarget, cache_key, canonical_url

    target = target.strip()
    if KEY_PATTERN.fullmatch(target.lower()):  # a key typed in capitals is still that key
        return target.lower(), None
    try:
        url = canonical_url(target, None, 80)
    except BadTarget as exc:
        raise click.BadParameter(f"neither a cache key (32 hex characters) nor an http:// URL ({exc.reason})",
                                 param_hint="KEY|URL") from None
    return cache_key(url, strip), url


@cli.command("purge")
@click.argument("target", metavar="KEY|URL")
@pass_ctx
def purge(ctx: Context, target: str) -> None:
    """Remove one object from the cache: its catalog entry, and its file unless another entry shares it.

    Clients asking for it afterwards go to the origin; if it stays popular it is fetched again.
    """
    from cachetap.store.disks import Disks
    from cachetap.tasks.housekeeping import purge_key

    settings = ctx.settings()
    key, url = resolve_key(target, settings.strip_query_params)
    entry, file = purge_key(open_catalog(settings), Disks.from_settings(settings), settings, key,
                            _index_notifier(settings))
    if entry is None:
        raise click.ClickException(f"{key}: not in the cache{f' ({url})' if url else ''}")
    file_note = {"kept": ", file kept: another entry has the same content", "deleted": ", file deleted",
                 "elsewhere": ", file left to the node and disk holding it (deleted there unless shared)"}.get(file, "")
    size = f"{entry.stored_size} bytes" if entry.stored_size is not None else "no file"
    click.echo(f"removed {key} ({entry.state}, {size}{file_note}): {entry.url}")


@cli.command("cleanup")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@pass_ctx
def cleanup(ctx: Context, as_json: bool) -> None:
    """Run the housekeeping passes once, now: revalidate, cleanup, reconcile, quota (for cron and tests)."""
    from cachetap.fetch.resolver import Resolver
    from cachetap.store.disks import Disks
    from cachetap.tasks.housekeeping import run_all

    settings = ctx.settings()
    setup_logging(settings.log_level)
    summary = run_all(open_catalog(settings), Disks.from_settings(settings), Resolver.from_settings(settings),
                      settings, index=_index_notifier(settings))
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    for name, counts in summary.items():
        click.echo(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _index_notifier(settings):
    """Tell capture nodes at once (they would otherwise notice at their next reconcile)."""
    from cachetap.tasks.app import create_app
    from cachetap.tasks.index_events import IndexNotifier

    return IndexNotifier(create_app(settings))
