"""`cachetap replay` (capture files) and `cachetap capture` (the live capture process)."""

from __future__ import annotations

import json
from dataclasses import asdict
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
    from cachetap.capture.pcapfile import CaptureFileError, read_frames
    from cachetap.capture.pipeline import Pipeline

    settings = ctx.settings()
    setup_logging(settings.log_level)
    sender = None
    if not dry_run:
        from cachetap.capture.batcher import analyze_batch_sender
        from cachetap.tasks.app import create_app

        sender = analyze_batch_sender(create_app(settings))
    pipeline = Pipeline(settings, sink=(lambda s: sender.add(s.to_dict())) if sender else None)
    out = sys.stdout
    try:
        with read_frames(capture_file) as frames:
            for obs in pipeline.run(frames):
                if not quiet:
                    out.write(json.dumps(obs.to_dict()) + "\n")
            if frames.end_reason:
                pipeline.rejected[frames.end_reason] += 1
    except CaptureFileError as exc:
        raise click.ClickException(f"{capture_file}: {exc}") from None
    finally:
        pipeline.finish()
        queued = None
        if sender is not None:
            sender.close()
            queued = asdict(sender.counters)
    summary = pipeline.summary()
    summary.update(file=str(capture_file), dry_run=dry_run)
    if queued is not None:
        summary["queued"] = queued
    out.write(json.dumps({"summary": summary}) + "\n")


@cli.command()
@click.option("--interface", "-i", help="Interface to sniff (default: the `interface` setting).")
@pass_ctx
def capture(ctx: Context, interface: str | None) -> None:
    """Run the live capture process (needs root or CAP_NET_RAW)."""
    from cachetap.capture.live import run_live_capture

    settings = ctx.settings(**({"interface": interface} if interface else {}))
    setup_logging(settings.log_level)
    if not settings.interface:
        raise click.ClickException("no interface: set `interface` in the config, CACHETAP_INTERFACE, or -i")
    run_live_capture(settings)
