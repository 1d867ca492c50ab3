"""`cachetap nodes`: the cluster's node registry (who is alive, what it does, where it is reached)."""

from __future__ import annotations

import json
import time

import click

from cachetap.cli.catalog_cmds import _ago, _size, open_catalog
from cachetap.cli.main import Context, cli, pass_ctx


@cli.command("nodes")
@click.option("--all", "show_all", is_flag=True, help="Also nodes not heard from within the liveness window.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--forget", metavar="NAME", help="Remove a retired node's rows from the registry.")
@pass_ctx
def nodes(ctx: Context, show_all: bool, as_json: bool, forget: str | None) -> None:
    """List the nodes of the cluster: roles, cache server URL, disks, version, last heartbeat."""
    from cachetap.store.nodes import liveness_window

    settings = ctx.settings()
    registry = open_catalog(settings).nodes
    if forget is not None:
        removed = registry.forget(forget)
        click.echo(f"forgot node {forget} ({removed} rows)" if removed else f"no node named {forget}")
        return
    now = time.time()
    found = registry.nodes(now, liveness_window(settings.node_heartbeat_interval))
    shown = [n for n in found if show_all or n.live]
    if as_json:
        for node in shown:
            click.echo(json.dumps(node.to_dict()))
        return
    if not shown:
        hidden = len(found) - len(shown)
        click.echo("no live nodes" + (f" ({hidden} not heard from lately: --all shows them)" if hidden else ""))
        return
    click.echo(f"{'NODE':20} {'STATE':5} {'ROLES':24} {'SEEN':>8} {'DISK':>10} {'FREE':>10} {'VERSION':8} PUBLIC URL")
    for node in shown:
        click.echo(f"{node.name[:20]:20} {'up' if node.live else 'gone':5} {','.join(node.roles)[:24]:24} "
                   f"{_ago(now - node.last_seen) if node.last_seen else 'left':>8} {_size(node.capacity):>10} "
                   f"{_size(node.free):>10} {node.version[:8]:8} {node.public_url or '-'}")
