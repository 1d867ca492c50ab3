"""The `cachetap` command: one group, one sub-module per area."""

from __future__ import annotations

import logging
import os
import json
import sys
import textwrap
from pathlib import Path

import click
import tomli_w

from cachetap import __version__
from cachetap.logs import quiet_kombu
from cachetap.settings import ConfigError, Settings, load_settings


class Context:
    """What every sub-command gets: the config file (if any), settings loaded on first use."""

    def __init__(self, config_file: Path | None, keep_privileges: bool = False, machine_metrics: bool = False) -> None:
        self.config_file = config_file
        self.keep_privileges = keep_privileges  # run and capture need root; the rest act as cache_dir's owner
        self.machine_metrics = machine_metrics  # counts into cache_dir/metrics, which /metrics sums
        self._settings: Settings | None = None

    def settings(self, need_cache_dir: bool = True, **overrides) -> Settings:
        if self._settings is None or overrides:
            try:
                self._settings = load_settings(self.config_file, **overrides)
            except ConfigError as exc:
                raise click.ClickException(f"invalid configuration:\n{exc}") from None
            if not self.keep_privileges:
                from cachetap.privileges import become_cache_owner

                become_cache_owner(self._settings.cache_dir, self._settings.run_as_user)
        if need_cache_dir:
            ensure_cache_dir(self._settings.cache_dir)
            if self.machine_metrics:
                from cachetap.metrics import use_box_directory

                use_box_directory(self._settings.cache_dir)
        return self._settings


def ensure_cache_dir(path: Path) -> None:
    """Create cache_dir if needed; a path we cannot write is named with the way to choose another."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise click.ClickException(
            f"cache_dir {path} is not writable ({exc.strerror or exc}); set cache_dir in the config file "
            "or CACHETAP_CACHE_DIR, e.g. CACHETAP_CACHE_DIR=/var/cache/cachetap") from None


pass_ctx = click.make_pass_decorator(Context)

# Commands whose work the machine's metrics count (captured requests, admissions, evictions, the
# console's purges and prefetches); the cache server joins them when it serves the catalog (serve_cmds).
MACHINE_METRICS = ("capture", "replay", "prefetch", "purge", "cleanup", "console")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if level != "DEBUG":  # libraries' start-up chatter (Alembic plugins, migrations) only on request
        logging.getLogger("alembic").setLevel(logging.WARNING)
    quiet_kombu()



@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="CACHETAP_CONFIG", help="TOML settings file (also CACHETAP_CONFIG).")
@click.version_option(__version__, prog_name="cachetap")
@click.pass_context
def cli(click_ctx: click.Context, config_file: Path | None) -> None:
    """cachetap: a passive HTTP cache accelerator for LANs."""
    if config_file is not None:
        # Child processes (workers, beat, capture) read the same file.
        os.environ["CACHETAP_CONFIG"] = str(config_file.resolve())
    from cachetap.privileges import die_with_supervisor

    die_with_supervisor()  # a child of `cachetap run` (serve, capture) stops with it
    command = click_ctx.invoked_subcommand
    click_ctx.obj = Context(config_file, keep_privileges=command in ("run", "capture", "config"),
                            machine_metrics=command in MACHINE_METRICS)


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@click.option("--secrets", is_flag=True, help="Show passwords and the admin token (read from the catalog, "
              "made there if this is the first start) instead of masking them.")
@pass_ctx
def config_show(ctx: Context, as_json: bool, secrets: bool) -> None:
    """Print the effective settings (file + environment), secrets masked, each with its help text."""
    from cachetap.settings import field_help

    settings = ctx.settings(need_cache_dir=False)
    data = settings.masked(secrets)
    if secrets:
        data["admin_token"] = effective_admin_token(settings)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    helps = field_help()
    for key in sorted(data):
        for line in textwrap.wrap(helps.get(key, ""), width=98):
            click.echo(f"# {line}")
        value = data[key]
        if value is None:
            click.echo(f"# {key} is unset\n")
        else:
            click.echo(f"{key} = {toml_inline(value)}\n")


def effective_admin_token(settings: Settings) -> str:
    """The admin token in force, as the console checks it (the catalog's unless one is configured)."""
    from cachetap.privileges import become_cache_owner

    if settings.admin_token:
        return settings.admin_token
    become_cache_owner(settings.cache_dir, settings.run_as_user)  # as root: no root-owned catalog files
    ensure_cache_dir(settings.cache_dir)
    from cachetap.cli.catalog_cmds import open_catalog
    from cachetap.store.admin_token import admin_token

    catalog = open_catalog(settings)
    try:
        return admin_token(catalog, settings.cache_dir)
    finally:
        catalog.engine.dispose()


def toml_inline(value) -> str:
    """A value as TOML on one line (tables inline), so that every key stays at the top level."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_inline(v)}" for k, v in value.items() if v is not None) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    return tomli_w.dumps({"v": value})[4:].strip()


def main() -> None:
    from cachetap.cli import (capture_cmds, catalog_cmds, console_cmds, deploy_cmds, fetch_cmds,  # noqa: F401
                              flower_cmds, node_cmds, purge_cmds, run_cmds, serve_cmds, simulate_cmds)  # (registers commands)
    try:
        cli(prog_name="cachetap")
    except ConfigError as exc:  # raised by a command, e.g. a cache_dir owned by another user
        click.echo(f"cachetap: {exc}", err=True)
        raise SystemExit(2) from None
