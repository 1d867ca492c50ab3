"""`cachetap flower`: Celery's Flower on cachetap's broker, behind basic auth with the admin token."""

from __future__ import annotations

import importlib.util
import os
import sys

import click

from cachetap.cli.main import Context, cli, effective_admin_token, pass_ctx

USER = "admin"


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--address", default="127.0.0.1", show_default=True, help="Address Flower listens on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True, help="Flower's port.")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def flower(ctx: Context, address: str, port: int, flower_args: tuple[str, ...]) -> None:
    """Run Flower (pip install 'cachetap[flower]') on cachetap's broker: workers, tasks, queues.

    Basic auth: user `admin`, the admin token as password (`cachetap config show --secrets`), unless
    FLOWER_BASIC_AUTH=user:password is set. Flower turns the workers' task events on while it runs.
    Other arguments pass through to Flower (e.g. --url_prefix=flower)."""
    if importlib.util.find_spec("flower") is None:
        raise click.ClickException("Flower is not installed: pip install 'cachetap[flower]'")
    settings = ctx.settings()
    env = dict(os.environ)
    # In the environment, not on the command line, where every user of the machine could read it.
    env.setdefault("FLOWER_BASIC_AUTH", f"{USER}:{effective_admin_token(settings)}")
    argv = [sys.executable, "-m", "celery", "-A", "cachetap", "--quiet", "flower", f"--address={address}",
            f"--port={port}", "--enable_events=True", *flower_args]
    click.echo(f"Flower on http://{address}:{port} (user {USER}, password: the admin token)", err=True)
    os.execve(sys.executable, argv, env)
