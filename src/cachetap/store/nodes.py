"""The node registry: which machines of a cluster are alive, what they do and where they are reached.

Every long-running process writes one row, `(node name, role)`, every heartbeat interval: its cache
server's public URL, its disks with their free space, its version and the figures it reports (a
capture: GETs and redirects per second, index size, the cache servers' health as it sees them). A
node is the set of its rows; it is alive while one of them was written within the liveness window.
Readers (placement of keys, the capture's redirect targets, `cachetap nodes`, the console) trust
these rows because only the operator's own nodes can write to the catalog; nothing in a packet or a
broker message names a node's URL.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cachetap import __version__
from cachetap.store.db import writer
from cachetap.store.models import Node

log = logging.getLogger(__name__)

NODES = Node.__table__
ROLES = ("capture", "cache", "worker", "beat")
CACHE_ROLE = "cache"          # a node with a cache server: a place for objects
LIVENESS_BEATS = 3            # a node missing this many heartbeats in a row is gone


def liveness_window(interval: float) -> float:
    return LIVENESS_BEATS * interval


@dataclass(frozen=True, slots=True)
class Disk:
    path: str
    total: int
    free: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "total": self.total, "free": self.free}


def disks_of(paths: Iterable[Path | str]) -> list[Disk]:
    """Size and free space of the filesystems holding `paths` (a missing path is left out)."""
    found = []
    for path in paths:
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        found.append(Disk(str(path), usage.total, usage.free))
    return found


def _disks_from(text: str) -> tuple[Disk, ...]:
    try:
        items = json.loads(text)
        return tuple(Disk(str(d["path"]), int(d["total"]), int(d["free"])) for d in items)
    except (ValueError, TypeError, KeyError):
        return ()


def _report_from(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class RoleRow:
    """What one process of a node last wrote."""

    name: str
    role: str
    public_url: str | None
    disks: tuple[Disk, ...]
    version: str
    pid: int
    started_at: float
    last_seen: float
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node: its roles' rows merged. `roles` holds only the live ones when listed as live."""

    name: str
    roles: tuple[str, ...]
    public_url: str | None
    disks: tuple[Disk, ...]
    version: str
    last_seen: float
    live: bool
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As `cachetap nodes --json` and the console show it."""
        return {"name": self.name, "live": self.live, "roles": list(self.roles), "public_url": self.public_url,
                "version": self.version, "last_seen": self.last_seen, "capacity": self.capacity, "free": self.free,
                "disks": [d.to_dict() for d in self.disks], "reports": self.reports}

    @property
    def capacity(self) -> int:
        """Bytes of its disks (the weight of a cache node in placement)."""
        return sum(d.total for d in self.disks)

    @property
    def free(self) -> int:
        return sum(d.free for d in self.disks)


def _merge(name: str, rows: list[RoleRow], now: float, window: float) -> NodeView:
    live_rows = [r for r in rows if r.last_seen > now - window]
    shown = live_rows or rows
    cache_rows = [r for r in shown if r.role == CACHE_ROLE]
    source = max(cache_rows or shown, key=lambda r: r.last_seen)  # the cache server knows URL and disks
    return NodeView(name=name, roles=tuple(sorted(r.role for r in shown)), public_url=source.public_url,
                    disks=source.disks, version=source.version, last_seen=max(r.last_seen for r in rows),
                    live=bool(live_rows), reports={r.role: r.report for r in shown})


def _live_processes(conn: sa.Connection, where: Any, now: float, keep_for: float,
                    leaving: str) -> dict[str, dict[str, Any]]:
    """The reports of the processes sharing a row that were seen within `keep_for`, but `leaving`'s.
    Read under the row's lock, so two beats never lose each other's report."""
    row = conn.execute(sa.select(NODES.c.report).where(where).with_for_update()).first()
    found = _report_from(row.report).get("processes") if row is not None else None
    if not isinstance(found, dict):
        return {}
    return {p: r for p, r in found.items()
            if p != leaving and isinstance(r, dict) and isinstance(r.get("seen"), (int, float))
            and r["seen"] > now - keep_for}


def _united(processes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A shared row's report: every process's own, and their list values (queues) united."""
    united: dict[str, Any] = {}
    for report in processes.values():
        for key, value in report.items():
            if isinstance(value, list):
                united[key] = sorted({*united.get(key, []), *(v for v in value if isinstance(v, str))})
    return {**united, "processes": dict(processes)}


def _shared_report(conn: sa.Connection, where: Any, process: str, own: Mapping[str, Any], now: float,
                   keep_for: float) -> str:
    processes = _live_processes(conn, where, now, keep_for, leaving=process)
    processes[process] = {**own, "seen": now}
    return json.dumps(_united(processes), default=str)


class NodeRegistry:
    """The `nodes` table. Each method is one short statement or transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    def beat(self, name: str, role: str, now: float, *, public_url: str | None = None,
             disks: Iterable[Disk] = (), report: Mapping[str, Any] | None = None,
             started_at: float | None = None, pid: int | None = None, version: str = __version__,
             process: str | None = None, keep_for: float = 0.0) -> None:
        """Write this process's row (insert on the first beat, update after).

        With `process`, several processes of the node share the role's row (its Celery workers, one
        per queue or so): each one's report is kept under `processes` (its own, `seen` at its last
        beat, dropped `keep_for` seconds later) and the row's report unites their list values (the
        queues), so no worker's beat overwrites another's."""
        if role not in ROLES:
            raise ValueError(f"unknown node role {role!r}; one of {ROLES}")
        own = dict(report or {})
        values = {"public_url": public_url, "disks": json.dumps([d.to_dict() for d in disks]),
                  "version": version[:32], "pid": os.getpid() if pid is None else pid,
                  "started_at": now if started_at is None else started_at, "last_seen": now,
                  "report": json.dumps(own, default=str)}
        where = sa.and_(NODES.c.name == name, NODES.c.role == role)
        with self._writer.begin() as conn:
            if process is not None:
                values["report"] = _shared_report(conn, where, process, own, now, keep_for)
            if conn.execute(sa.update(NODES).where(where).values(values)).rowcount == 1:
                return
        try:
            with self._writer.begin() as conn:
                conn.execute(NODES.insert().values(name=name, role=role, **values))
        except sa.exc.IntegrityError:  # another process of the node inserted it first
            with self._writer.begin() as conn:
                if process is not None:
                    values["report"] = _shared_report(conn, where, process, own, now, keep_for)
                conn.execute(sa.update(NODES).where(where).values(values))

    def leave(self, name: str, role: str, process: str | None = None, now: float | None = None,
              keep_for: float = 0.0) -> None:
        """A process stopping cleanly: its role stops counting at once (the row stays for the record),
        unless other processes sharing the row (`process`, as in `beat`) were seen within `keep_for`."""
        where = sa.and_(NODES.c.name == name, NODES.c.role == role)
        with self._writer.begin() as conn:
            if process is None:
                conn.execute(sa.update(NODES).where(where).values(last_seen=0.0))
                return
            now = time.time() if now is None else now
            others = _live_processes(conn, where, now, keep_for, leaving=process)
            values: dict[str, Any] = {"report": json.dumps(_united(others), default=str)}
            if not others:
                values["last_seen"] = 0.0
            conn.execute(sa.update(NODES).where(where).values(values))

    def forget(self, name: str) -> int:
        """Remove every row of node `name` (an operator retiring it); returns how many."""
        with self._writer.begin() as conn:
            return conn.execute(sa.delete(NODES).where(NODES.c.name == name)).rowcount

    def rows(self) -> list[RoleRow]:
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(NODES).order_by(NODES.c.name, NODES.c.role))
            return [RoleRow(name=r.name, role=r.role, public_url=r.public_url, disks=_disks_from(r.disks),
                            version=r.version, pid=r.pid, started_at=r.started_at, last_seen=r.last_seen,
                            report=_report_from(r.report)) for r in result]

    def nodes(self, now: float, window: float) -> list[NodeView]:
        """Every node that ever registered, by name, live or not."""
        grouped: dict[str, list[RoleRow]] = {}
        for row in self.rows():
            grouped.setdefault(row.name, []).append(row)
        return [_merge(name, rows, now, window) for name, rows in grouped.items()]

    def live(self, now: float, window: float, role: str | None = None) -> list[NodeView]:
        """The nodes heard from within `window` seconds (with a live row of `role`, if given)."""
        return [n for n in self.nodes(now, window) if n.live and (role is None or role in n.roles)]


class Heartbeat:
    """A thread writing one process's row every `interval` seconds until stopped.

    `describe()` returns the keyword arguments of `NodeRegistry.beat` that change (public_url,
    disks, report); it runs on this thread, never on a hot path. A failed write is logged once
    and tried again next beat (the catalog may be restarting).
    """

    def __init__(self, registry: NodeRegistry, name: str, role: str, interval: float,
                 describe: Callable[[], Mapping[str, Any]] = dict, clock: Callable[[], float] = time.time,
                 process: str | None = None) -> None:
        self.registry = registry
        self.name = name
        self.role = role
        self.process = process  # set when several processes of the node share the role's row
        self.interval = interval
        self.describe = describe
        self.clock = clock
        self.started_at = clock()
        self.beats = 0
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cachetap-heartbeat-{role}", daemon=True)

    def beat_once(self) -> bool:
        try:
            self.registry.beat(self.name, self.role, self.clock(), started_at=self.started_at,
                               process=self.process, keep_for=liveness_window(self.interval), **self.describe())
        except Exception as exc:  # catalog down or a bad report: keep the process running
            if not self._failing:
                log.warning("node %s: heartbeat (%s) not written: %s", self.name, self.role, exc)
            self._failing = True
            return False
        if self._failing:
            log.warning("node %s: heartbeat (%s) written again", self.name, self.role)
        self._failing = False
        self.beats += 1
        return True

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self, leave: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if leave:
            try:
                self.registry.leave(self.name, self.role, self.process, now=self.clock(),
                                    keep_for=liveness_window(self.interval))
            except Exception as exc:
                log.warning("node %s: could not leave the registry (%s): %s", self.name, self.role, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat_once()
            self._stop.wait(self.interval)


def start_heartbeat(database_url: str, name: str, role: str, interval: float,
                    describe: Callable[[], Mapping[str, Any]] = dict, process: str | None = None) -> Heartbeat:
    """A started heartbeat on an engine of its own (a process's other engine may be forked or busy);
    `process` names it among the node's processes sharing the role's row (Heartbeat)."""
    from cachetap.store.db import make_engine, upgrade

    engine = make_engine(database_url)
    upgrade(engine)  # a capture may be the first process on a new catalog
    return Heartbeat(NodeRegistry(engine), name, role, interval, describe, process=process).start()
