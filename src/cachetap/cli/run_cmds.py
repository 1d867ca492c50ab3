"""`cachetap run` (everything on one machine) and `cachetap worker` (a Celery worker)."""

from __future__ import annotations

import logging
import sys

import click

from cachetap.cli.main import Context, cli, pass_ctx, setup_logging

log = logging.getLogger("cachetap.run")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def worker(ctx: Context, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker; arguments pass through (e.g. `-Q analyze -c 2`)."""
    from cachetap.tasks.app import create_app

    app = create_app(ctx.settings())
    app.worker_main(["worker", *celery_args])


@cli.command()
@click.option("--interface", "-i", help="Sniff this interface (overrides the `interface` setting).")
@click.option("--no-capture", is_flag=True, help="Do not start the live capture even if an interface is set.")
@pass_ctx
def run(ctx: Context, interface: str | None, no_capture: bool) -> None:
    """Run everything on this machine: workers for every queue, beat, cache server, and capture when an
    interface is configured. Stops cleanly on Ctrl-C / SIGTERM."""
    import os

    from cachetap.cli.catalog_cmds import open_catalog
    from cachetap.privileges import prepare_cache_dir
    from cachetap.privileges import give_cache_dir, service_user
    from cachetap.supervisor import Supervisor, plan_children

    if interface:
        os.environ["CACHETAP_INTERFACE"] = interface  # children load settings themselves
    settings = ctx.settings(**({"interface": interface} if interface else {}))
    setup_logging(settings.log_level)
    if settings.interface and not no_capture:
        from cachetap.cli.capture_cmds import check_interface
        check_interface(settings.interface)
    user = service_user(settings)
    if user is not None:  # the children run as this user: cache_dir and all in it must be theirs
        settings.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        give_cache_dir(settings.cache_dir, user)
    prepare_cache_dir(settings.cache_dir, settings.run_as_user)
    open_catalog(settings).engine.dispose()  # migrate once before the workers start
    if user is not None:
        give_cache_dir(settings.cache_dir, user)  # the catalog files the migration made as root
        log.info("workers, beat and cache server run as %s; capture with CAP_NET_RAW and CAP_SYS_NICE only",
                 user.name)
    children = plan_children(settings, python=sys.executable, capture=not no_capture, user=user)
    log.info("starting %s", ", ".join(c.name for c in children))
    raise SystemExit(Supervisor(children).run())
