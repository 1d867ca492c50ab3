"""`cachetap deploy systemd`: unit files the way Celery's documentation deploys workers, plus logrotate.

One EnvironmentFile holds what every unit shares; `celery multi` starts the three workers with the pool
each needs (threads for downloads, which wait on aria2); beat, the cache server and the capture are
units of their own. Only the capture holds capabilities (CAP_NET_RAW to sniff and inject, CAP_SYS_NICE
for its real-time priority), as ambient capabilities of an unprivileged user: no setcap on the shared
Python interpreter, which would hand raw sockets to every Python program.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cachetap.cli.main import Context, cli, pass_ctx

COMMON = """\
[Unit]
Description={description}
After=network-online.target{after}
Wants=network-online.target
PartOf=cachetap.target

[Service]
User={user}
Group={user}
EnvironmentFile={etc}/cachetap.env
WorkingDirectory={cache_dir}
RuntimeDirectory=cachetap
RuntimeDirectoryPreserve=yes
LogsDirectory=cachetap
NoNewPrivileges={no_new_privileges}
UMask=0077
"""

UNITS = {
    "cachetap-workers.service": ("cachetap Celery workers (analyze, download, schedule)", "", """\
Type=forking
ExecStart={celery} multi start $CELERYD_NODES -A cachetap --pidfile=/run/cachetap/%n.pid \\
    --logfile=/var/log/cachetap/%n%I.log --loglevel=$CELERYD_LOG_LEVEL $CELERYD_OPTS
ExecStop={celery} multi stopwait $CELERYD_NODES --pidfile=/run/cachetap/%n.pid
# Live settings without restarting the workers (Celery restarts a worker on SIGHUP).
ExecReload={cachetap} reload
Restart=always
"""),
    "cachetap-beat.service": ("cachetap beat (housekeeping schedule)", "", """\
Type=simple
ExecStart={celery} -A cachetap beat --schedule={cache_dir}/beat-schedule --loglevel=$CELERYD_LOG_LEVEL
Restart=always
"""),
    "cachetap-serve.service": ("cachetap cache server", "", """\
Type=simple
ExecStart={cachetap} serve
ExecReload=/bin/kill -USR1 $MAINPID
ExecReload={cachetap} reload
Restart=always
"""),
    "cachetap-capture.service": ("cachetap capture (mirror port or gateway)", " cachetap-serve.service", """\
Type=simple
ExecStart={cachetap} capture
ExecReload=/bin/kill -USR1 $MAINPID
ExecReload={cachetap} reload
AmbientCapabilities=CAP_NET_RAW CAP_SYS_NICE
CapabilityBoundingSet=CAP_NET_RAW CAP_SYS_NICE
Restart=always
RestartPreventExitStatus=78
"""),
}

TARGET = """\
[Unit]
Description=cachetap passive HTTP cache accelerator
Wants={wanted}

[Install]
WantedBy=multi-user.target
"""

ENV = """\
# Shared by every cachetap unit. Settings: {etc}/cachetap.toml (see `cachetap config show`).
CACHETAP_CONFIG={etc}/cachetap.toml
CACHETAP_CACHE_DIR={cache_dir}
# celery multi: node names that do not clash with `cachetap run`, the threads pool for downloads.
CELERYD_NODES="{nodes}"
CELERYD_OPTS="{options}"
CELERYD_LOG_LEVEL=WARNING
"""

LOGROTATE = """\
/var/log/cachetap/*.log {cache_dir}/access.log {{
    weekly
    rotate 8
    compress
    delaycompress
    missingok
    notifempty
    create 0640 {user} {user}
    sharedscripts
    postrotate
        systemctl kill --signal=USR1 cachetap-serve.service cachetap-capture.service >/dev/null 2>&1 || true
    endscript
}}
"""


# What each node role runs: its own units, and its Celery workers (name, options for celery multi).
ROLES = {
    "capture": (("cachetap-capture.service",), (("ct-analyze", "-Q:ct-analyze analyze -c:ct-analyze 2"),)),
    "cache": (("cachetap-serve.service",),
              (("ct-download", "-Q:ct-download download -P:ct-download threads -c:ct-download 4"),)),
    "control": (("cachetap-beat.service",), (("ct-schedule", "-Q:ct-schedule schedule,capture -c:ct-schedule 1"),)),
}
ALL_ROLES = tuple(ROLES)


def render(user: str, etc: str, cache_dir: str, bindir: str, roles: tuple[str, ...] = ALL_ROLES) -> dict[str, str]:
    """Relative path under the prefix -> file content, for a machine holding `roles`."""
    chosen = [ROLES[role] for role in ALL_ROLES if role in roles]
    workers = [worker for _, role_workers in chosen for worker in role_workers]
    units = [unit for role_units, _ in chosen for unit in role_units]
    if workers:
        units.insert(0, "cachetap-workers.service")
    values = {"user": user, "etc": etc, "cache_dir": cache_dir, "celery": f"{bindir}/celery",
              "cachetap": f"{bindir}/cachetap", "wanted": " ".join(units),
              "nodes": " ".join(name for name, _ in workers), "options": " ".join(opts for _, opts in workers)}
    files = {}
    for name in units:
        description, after, service = UNITS[name]
        privileged = name == "cachetap-capture.service"
        head = COMMON.format(description=description, after=after,
                             no_new_privileges="no" if privileged else "yes", **values)
        files[f"etc/systemd/system/{name}"] = head + service.format(**values) + "\n[Install]\nWantedBy=cachetap.target\n"
    files["etc/systemd/system/cachetap.target"] = TARGET.format(**values)
    files[f"{etc.lstrip('/')}/cachetap.env"] = ENV.format(**values)
    files["etc/logrotate.d/cachetap"] = LOGROTATE.format(**values)
    return files


@cli.group()
def deploy() -> None:
    """Write files that deploy cachetap as a service."""


@deploy.command("systemd")
@click.option("--user", default="cachetap", show_default=True, help="Unprivileged user the services run as.")
@click.option("--prefix", default="/", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Write under this directory instead of / (packaging, review).")
@click.option("--role", "roles", multiple=True, type=click.Choice(["all", *ALL_ROLES]), default=["all"],
              show_default=True, help="What this machine runs in a cluster (repeat for several): capture "
              "(capture + analyze worker), cache (cache server + download worker), control (beat + schedule "
              "worker).")
@click.option("--dry-run", is_flag=True, help="Print the files instead of writing them.")
@pass_ctx
def deploy_systemd(ctx: Context, user: str, prefix: Path, roles: tuple[str, ...], dry_run: bool) -> None:
    """systemd units (workers via celery multi, beat, cache server, capture) for this machine's roles,
    a target wanting them, the shared EnvironmentFile and a logrotate snippet."""
    settings = ctx.settings(need_cache_dir=False)
    bindir = str(Path(sys.executable).parent)
    files = render(user, "/etc/cachetap", str(settings.cache_dir), bindir,
                   ALL_ROLES if "all" in roles else tuple(roles))
    for relative, content in files.items():
        if dry_run:
            click.echo(f"# --- {Path('/') / relative}\n{content}")
            continue
        path = prefix / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        click.echo(f"wrote {path}", err=True)
    if not dry_run:
        click.echo(f"next: useradd --system {user}; mkdir -p {settings.cache_dir}; chown {user} "
                   f"{settings.cache_dir}; systemctl daemon-reload; systemctl enable --now cachetap.target", err=True)
