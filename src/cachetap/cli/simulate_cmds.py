"""`cachetap simulate`: what would a cache of this size have saved on these logs or captures?"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cachetap.cli.main import Context, cli, pass_ctx


def _rate(text: str) -> float | None:
    if text.strip().lower() in ("inf", "0", "instant"):
        return None
    from cachetap.simulate.runner import parse_size

    kind, value = parse_size(text)
    if kind != "bytes":
        raise ValueError(f"{text}: a download rate is bytes per second, e.g. 50M")
    return value


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cache-size", "-s", "sizes", default="5%", show_default=True,
              help="Cache sizes, comma-separated: bytes with a unit (500G, 2T) or a share of the unique bytes (5%).")
@click.option("--policy", "-p", "policies", default=None,
              help="Policies, comma-separated (default: the eviction_policy setting); 'all' for every one.")
@click.option("--threshold", type=click.IntRange(min=0), default=None,
              help="Admission threshold (default: the admission_threshold setting).")
@click.option("--download-rate", "rate", default="50M", show_default=True,
              help="Bytes/s a download runs at (requests go to the origin until it is done); 'inf': at once.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: hit ratio over time and savings against cache size.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@pass_ctx
def simulate(ctx: Context, files: tuple[Path, ...], sizes: str, policies: str | None, threshold: int | None,
             rate: str, as_json: bool, plot_path: Path | None, quiet: bool) -> None:
    """Replay Squid access.log, nginx/lancache combined logs or pcap/pcapng captures (gzip or not)
    through cachetap's admission, freshness and eviction code, and report what each cache size saves."""
    from cachetap.core.policy import POLICIES
    from cachetap.simulate.inputs import InputError
    from cachetap.simulate.runner import Progress, load, parse_size, sim_config, simulate as run

    settings = ctx.settings()
    names = [settings.eviction_policy] if not policies else \
        sorted(POLICIES) if policies.strip() == "all" else [p.strip() for p in policies.split(",") if p.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise click.BadParameter(f"unknown policy {', '.join(unknown)}; one of {', '.join(sorted(POLICIES))}, all",
                                 param_hint="--policy")
    try:
        wanted = [parse_size(s) for s in sizes.split(",") if s.strip()]
        download_rate = _rate(rate)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    progress = Progress(enabled=not quiet)
    try:
        work = load(list(files), settings, progress)
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    if not work.keys:
        raise click.ClickException(f"no cacheable request in {', '.join(map(str, files))} "
                                   f"(skipped: {dict(work.skipped) or 'none'})")
    unique = work.unique_bytes
    capacities = sorted({int(v if kind == "bytes" else unique * v / 100) for kind, v in wanted})
    config = sim_config(settings, settings.admission_threshold if threshold is None else threshold, download_rate,
                        work.times[-1] - work.times[0])
    runs = [{"policy": name, "capacity": cap, "result": run(work, name, cap, config, progress)}
            for cap in capacities for name in names]
    summary = {"requests": len(work.keys), "unique_bytes": unique,
               "bytes_requested": sum(work.sent), "skipped": dict(sorted(work.skipped.items())),
               "threshold": config.admission_threshold, "download_rate": download_rate}
    if as_json:
        out = [{"policy": r["policy"], "cache_size": r["capacity"], **_figures(r["result"])} for r in runs]
        click.echo(json.dumps({"input": summary, "results": out}, indent=2))
    else:
        _table(summary, runs)
    if plot_path is not None:
        try:
            from cachetap.simulate.plot import plot
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'cachetap[plot]'") from None
        plot(plot_path, runs)
        click.echo(f"plot written to {plot_path}", err=True)


def _figures(result) -> dict:
    data = result.to_dict()
    data.pop("timeline")
    return data


def _table(summary: dict, runs: list[dict]) -> None:
    rate = summary["download_rate"]
    click.echo(f"{summary['requests']:,} requests, {summary['bytes_requested'] / 1e9:,.1f} GB asked, "
               f"{summary['unique_bytes'] / 1e9:,.1f} GB unique; threshold {summary['threshold']}, downloads "
               + ("instant" if rate is None else f"at {rate / 1e6:g} MB/s"))
    if summary["skipped"]:
        click.echo("skipped: " + ", ".join(f"{k} {v:,}" for k, v in summary["skipped"].items()))
    click.echo(f"{'policy':8} {'cache GB':>10} {'byte hit':>9} {'obj hit':>8} {'served GB':>11} "
               f"{'fetched GB':>11} {'saved GB':>11} {'peak GB':>9}")
    for r in runs:
        res = r["result"]
        click.echo(f"{r['policy']:8} {r['capacity'] / 1e9:10,.1f} {res.byte_hit_ratio:9.3f} {res.object_hit_ratio:8.3f} "
                   f"{res.bytes_hit / 1e9:11,.1f} {res.origin_bytes_for_cache / 1e9:11,.1f} "
                   f"{res.net_saved / 1e9:11,.1f} {res.peak_disk / 1e9:9,.1f}")
    sys.stdout.flush()
