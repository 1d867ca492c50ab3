"""`cachetap console`: the operator console (dashboard and admin API); `cachetap run` starts it too."""

from __future__ import annotations

import socket

import click

from cachetap.cli.main import Context, cli, pass_ctx, setup_logging


def console_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one line naming the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        from cachetap.supervisor import EXIT_CONFIG

        sock.close()
        click.echo(f"Error: console cannot listen on {host}:{port} ({exc.strerror or exc}); set console_port "
                   "(or CACHETAP_CONSOLE_PORT) to a free port", err=True)
        raise SystemExit(EXIT_CONFIG) from None  # `cachetap run` does not restart it: only the operator can fix it
    sock.listen(128)
    return sock


@cli.command()
@click.option("--host", help="Address to listen on (default: the console_host setting, loopback).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: the console_port setting; 0 picks one).")
@click.option("--quiet", is_flag=True, hidden=True, help="Do not announce the URL (cachetap run prints it).")
@pass_ctx
def console(ctx: Context, host: str | None, port: int | None, quiet: bool) -> None:
    """Serve the operator console: live dashboard, catalog, downloads, and the admin API (/api)."""
    import uvicorn

    from cachetap.cli.catalog_cmds import open_catalog
    from cachetap.console.app import create_console

    settings = ctx.settings()
    setup_logging(settings.log_level)
    open_catalog(settings).engine.dispose()  # migrated before the first request
    host = host or settings.console_host
    sock = bind(host, settings.console_port if port is None else port)
    if not quiet:
        click.echo(f"console on {console_url(host, sock.getsockname()[1])}", err=True)
    config = uvicorn.Config(create_console(settings), log_level=settings.log_level.lower(), access_log=False,
                            lifespan="off", server_header=False,
                            timeout_graceful_shutdown=1)  # open pages poll: do not wait for them to go
    uvicorn.Server(config).run(sockets=[sock])
