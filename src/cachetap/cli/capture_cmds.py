"""`cachetap replay` (capture files) and `cachetap capture` (the live capture process)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from cachetap.cli.main import Context, cli, pass_ctx, setup_logging


@cli.command()
@click.argument("capture_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Decide only; queue nothing to analyze.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary line.")
@pass_ctx
def replay(ctx: Context, capture_file: Path, dry_run: bool, quiet: bool) -> None:
    """Run a pcap/pcapng file through the capture pipeline.

    Prints one JSON line per request seen, then a summary line ({"summary": ...}) with the counts of
    decisions and of rejected packets by reason.
    """
    from cachetap.capture.replay import replay_capture

    settings = ctx.settings()
    setup_logging(settings.log_level)
    app = None
    if not dry_run:
        from cachetap.tasks.app import create_app

        app = create_app(settings)
    out = sys.stdout

    def show(obs) -> None:
        out.write(json.dumps(obs.to_dict()) + "\n")

    summary = replay_capture(settings, capture_file, app=app, each=None if quiet else show)
    if "error" in summary:
        raise click.ClickException(f"{summary['error']}; replay reads pcap or pcapng files (tcpdump -w FILE)")
    summary["dry_run"] = dry_run
    out.write(json.dumps({"summary": summary}) + "\n")


@cli.command()
@click.option("--interface", "-i", help="Interface to sniff (default: the `interface` setting).")
@pass_ctx
def capture(ctx: Context, interface: str | None) -> None:
    """Run the live capture process (needs root or CAP_NET_RAW)."""
    from cachetap.capture.live import run_live_capture
    from cachetap.capture.sniffer import CaptureOpenError
    from cachetap.tasks.app import create_app

    if interface:  # in the environment, so that a reload loads the same interface
        os.environ["CACHETAP_INTERFACE"] = interface
    settings = ctx.settings(**({"interface": interface} if interface else {}))
    setup_logging(settings.log_level)
    if not settings.interface:
        raise ConfigProblem("no interface: set `interface` in the config, CACHETAP_INTERFACE, or -i")
    try:
        check_interface(settings.interface)
        run_live_capture(settings, create_app(settings))
    except CaptureOpenError as exc:
        raise ConfigProblem(capture_fix(str(exc), settings.interface)) from None


class ConfigProblem(click.ClickException):
    """A mistake only the operator can fix: exit status 78 (EX_CONFIG), which `cachetap run`
    does not restart."""
    exit_code = 78


def check_interface(name: str) -> None:
    """Raise ConfigProblem naming the interfaces that exist when `name` is not one of them."""
    import socket

    try:
        socket.if_nametoindex(name)
    except OSError:
        names = ", ".join(n for _, n in socket.if_nameindex())
        raise ConfigProblem(f"cannot capture on {name}: no such network interface (this machine has: {names}); "
                            "set `interface` or -i to one of them") from None


def capture_fix(message: str, interface: str) -> str:
    if "permission denied" not in message:
        return message
    caps = "CAP_NET_RAW CAP_SYS_NICE"
    return (f"cannot capture on {interface}: permission denied, the capture needs CAP_NET_RAW (only the capture).\n"
            f"Under systemd: AmbientCapabilities={caps} in its unit (`cachetap deploy systemd` writes it); "
            f"by hand as root: setpriv --reuid=cachetap --regid=cachetap --init-groups "
            f"--inh-caps=+net_raw,+sys_nice --ambient-caps=+net_raw,+sys_nice cachetap capture -i {interface}")
