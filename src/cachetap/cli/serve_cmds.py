"""`cachetap serve`: the cache server alone (it also runs inside `cachetap run`)."""

from __future__ import annotations

from pathlib import Path

import click

from cachetap.cli.main import Context, cli, pass_ctx, setup_logging


@cli.command()
@click.option("--host", help="Address to listen on (default: the serve_host setting).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: the serve_port setting; 0 picks one).")
@click.option("--processes", type=click.IntRange(1, 64), help="Worker processes sharing the port (SO_REUSEPORT).")
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Serve a plain directory instead of the catalog (mirrors, tests, benchmarks).")
@click.option("--quiet", is_flag=True, hidden=True, help="Do not announce the address (cachetap run prints it).")
@pass_ctx
def serve(ctx: Context, host: str | None, port: int | None, processes: int | None, directory: Path | None,
          quiet: bool) -> None:
    """Serve cached objects at /c/<key>/<filename> (GET, HEAD, ranges, conditionals, /healthz)."""
    from cachetap.logs import open_access_log
    from cachetap.web.lookup import CatalogLookup, DirectoryLookup
    from cachetap.web.workers import run_server

    settings = ctx.settings()
    setup_logging(settings.log_level)
    hint_secret = None  # a plain directory has no capture that signs origin hints
    follow = None
    if directory is not None:
        lookup = DirectoryLookup(directory)
    else:
        from cachetap.cli.catalog_cmds import open_catalog
        from cachetap.store.disks import Disks
        from cachetap.core.urls import HINT_SECRET
        from cachetap.metrics import use_box_directory
        from cachetap.store.admin_token import admin_token

        catalog = open_catalog(settings)
        lookup = CatalogLookup(catalog, Disks.from_settings(settings))
        if not settings.embedded_broker:  # a cluster: purges are broadcast (one box: the row TTL, 1 s)
            follow = _index_follower(settings, lookup)
        hint_secret = catalog.shared_secret(HINT_SECRET)
        admin_token(catalog, settings.cache_dir, settings.admin_token)  # a cache node alone: its file too
        use_box_directory(settings.cache_dir)  # /metrics: every cachetap process of this machine
    if directory is None:  # `cachetap reload` changes the log level (here and in forked workers)
        from cachetap.reloading import LiveSettings

        LiveSettings(settings).watch("serve")
    host = host or settings.serve_host
    port = settings.serve_port if port is None else port

    heartbeats = []

    def announce(bound: int) -> None:
        if not quiet:
            click.echo(f"listening on http://{host}:{bound}", err=True)
        if directory is None:  # a cache node: register its URL and disks for placement and redirects
            heartbeats.append(_cache_heartbeat(settings, bound))

    access_log = None if directory is not None else open_access_log(settings.access_log_path, reopen_on_usr1=False)
    try:
        run_server(host, port, lookup, processes=processes or settings.serve_processes, on_ready=announce,
                   strip_query_params=settings.strip_query_params, hint_secret=hint_secret,
                   max_connections=settings.serve_max_connections,
                   max_connections_per_address=settings.serve_max_connections_per_address,
                   access_log=access_log, in_each_process=follow)
    finally:
        for beat in heartbeats:
            beat.stop()


def _cache_heartbeat(settings, port: int):
    from cachetap.store.nodes import disks_of, start_heartbeat
    from cachetap.web.urls import public_base_url

    url = public_base_url(settings.public_url, settings.serve_host, port)
    return start_heartbeat(settings.effective_database_url, settings.effective_node_name, "cache",
                           settings.node_heartbeat_interval,
                           lambda: {"public_url": url, "disks": disks_of([d.path for d in settings.disks])})


def _index_follower(settings, lookup):
    """What each serving process starts: its own broker connection following the index fanout, so a
    purged or moved object leaves its row cache at once (tasks/index_events.IndexFollower)."""
    import socket

    def start(slot: int) -> None:
        from cachetap.tasks.app import create_app
        from cachetap.tasks.index_events import IndexFollower

        name = f"cachetap.serve.{socket.gethostname()}.{settings.effective_node_name}.{slot}"
        IndexFollower(create_app(settings), lookup.forget, name).start()
    return start
