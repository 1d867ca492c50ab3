"""`cachetap run` (everything on one machine) and `cachetap worker` (a Celery worker)."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path

import click

from cachetap import __version__
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
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Log level of every process (overrides `log_level`); debug shows the details of each.")
@pass_ctx
def run(ctx: Context, interface: str | None, no_capture: bool, log_level: str | None) -> None:
    """Run everything on this machine: workers for every queue, beat, cache server, console, and capture when an
    interface is configured. Stops cleanly on Ctrl-C / SIGTERM."""
    from cachetap.cli.catalog_cmds import open_catalog
    from cachetap.metrics import clear_box_directory
    from cachetap.privileges import give_cache_dir, give_disks, prepare_cache_dir, service_user
    from cachetap.store.admin_token import admin_token
    from cachetap.supervisor import Supervisor, plan_children

    overrides = {}
    if interface:
        os.environ["CACHETAP_INTERFACE"] = overrides["interface"] = interface  # children load settings themselves
    if log_level:
        os.environ["CACHETAP_LOG_LEVEL"] = overrides["log_level"] = log_level.upper()
    settings = ctx.settings(**overrides)
    setup_logging(settings.log_level)
    if settings.interface and not no_capture:
        from cachetap.cli.capture_cmds import check_interface
        check_interface(settings.interface)
    user = service_user(settings)
    if user is not None:  # the children run as this user: cache_dir and all in it must be theirs
        settings.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        give_cache_dir(settings.cache_dir, user)
        give_disks(settings, user)  # the disks objects are stored on, too
    prepare_cache_dir(settings.cache_dir, settings.run_as_user)
    lock = hold_instance_lock(settings.cache_dir)  # noqa: F841  (held until this process ends)
    clear_box_directory(settings.cache_dir)  # metrics start from zero, as after any restart
    catalog = open_catalog(settings)  # migrate once before the workers start
    admin_token(catalog, settings.cache_dir, settings.admin_token)  # first start: made, and the file written
    catalog.engine.dispose()
    if user is not None:
        give_cache_dir(settings.cache_dir, user)  # the catalog files the migration made as root, the token file
    # Children warn about running as root on their own; the summary below is the start-up output.
    os.environ["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser privileges"
    children = plan_children(settings, python=sys.executable, capture=not no_capture, user=user)
    click.echo(startup_summary(settings, children, capture_wanted=not no_capture, user=user), err=True)
    supervisor = Supervisor(children)
    code = supervisor.run()
    click.echo(f"stopped in {supervisor.stopped_in:.1f} s", err=True)
    # Every child is reaped and the instance lock goes with the process: skip tearing down the
    # imported libraries' objects, which took 0.6-1 s of the stop on a loaded 2-core machine.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def hold_instance_lock(cache_dir: Path):
    """One `cachetap run` per cache directory: an flock on cache_dir/run.pid, released by the kernel
    when this process ends however it ends (kill -9 included), so a stale file never blocks a start."""
    path = cache_dir / "run.pid"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "unknown"
        fh.close()
        raise click.ClickException(f"cachetap is already running on {cache_dir} (pid {pid}); stop it first "
                                   "or give this one another cache_dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def startup_summary(settings, children, capture_wanted: bool, user=None) -> str:
    """What runs, where the data is, capture and mode, the cache server's URL: the whole start-up output."""
    from cachetap.cli.console_cmds import console_url
    from cachetap.settings import mask_url
    from cachetap.web.urls import public_base_url

    names = {c.name for c in children}
    if "capture" in names:
        capture = f"on {settings.interface}"
    elif not capture_wanted:
        capture = "off (--no-capture)"
    else:
        capture = "off (no interface: set `interface` or run -i IFACE)"
    mode = settings.mode + (" (counts and caches, never redirects)" if settings.mode == "observe" else "")
    broker = "embedded" if settings.embedded_broker else mask_url(settings.effective_broker_url)
    workers = f"analyze x2, download x{settings.download_max_concurrent} threads, schedule, beat"
    return "\n".join([
        f"cachetap {__version__} running (pid {os.getpid()}), mode {mode}",
        f"  data     {settings.cache_dir} (catalog {mask_url(settings.effective_database_url).split(':', 1)[0]}, "
        f"broker {broker})",
        f"  capture  {capture}",
        f"  cache    {public_base_url(settings.public_url, settings.serve_host, settings.serve_port)} "
        f"(listening on {settings.serve_host}:{settings.serve_port})",
        f"  console  {console_url(settings.console_host, settings.console_port)} (admin token: "
        "`cachetap config show --secrets`)",
        f"  workers  {workers}" + (f" as {user.name} (capture with CAP_NET_RAW and CAP_SYS_NICE only)"
                                   if user is not None else ""),
        "  Ctrl-C or SIGTERM stops everything; --log-level debug shows each process's details.",
    ])


@cli.command()
@pass_ctx
def reload(ctx: Context) -> None:
    """Apply changed settings to the running cachetap processes of this cache_dir without restarting
    them (scope, host and freshness rules, log level); names the changed settings that need a restart."""
    from cachetap.reloading import request_reload, running_processes

    settings = ctx.settings(need_cache_dir=False)  # a bad file stops here, before any process is told
    if not running_processes(settings.cache_dir):
        raise click.ClickException(f"no running cachetap process uses {settings.cache_dir}: nothing to reload "
                                   "(give reload the configuration the service runs with: -c FILE or CACHETAP_CONFIG)")
    try:
        outcome = request_reload(settings.cache_dir)
    except OSError as exc:
        raise click.ClickException(f"cannot write {settings.cache_dir}/reload.stamp ({exc.strerror or exc}); "
                                   "run reload as the user cachetap runs as, or as root") from None
    roles = sorted({str(a["role"]).removesuffix(" (child)") for a in outcome.answered.values()})
    count = len(outcome.answered)
    click.echo(f"reloaded by {count} process{'' if count == 1 else 'es'} ({', '.join(roles)})")
    click.echo(f"applied live: {', '.join(outcome.live) or 'nothing changed'}")
    if outcome.restart:
        click.echo(f"restart needed for: {', '.join(outcome.restart)} "
                   "(restart `cachetap run`, or `systemctl restart cachetap.target`)")
    for pid, error in sorted(outcome.errors.items()):
        click.echo(f"pid {pid} ({outcome.answered[pid]['role']}) kept its settings: {error}", err=True)
    for pid, role in sorted(outcome.silent.items()):
        click.echo(f"pid {pid} ({role}) did not answer within 3 s; look at its log, or restart it", err=True)
    if outcome.errors or outcome.silent:
        raise SystemExit(1)
