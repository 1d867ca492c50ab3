"""The console's figures in the catalog: what each object saved and cost, and the `stats` time series.

Who writes what (every writer adds to the entry and to its minute and hour buckets in one transaction):
  * the cache server's hit flush: requests served and body bytes sent (`Catalog.add_hits`);
  * the download task, once an object is published: the origin bytes its download took (`count_fetched`);
  * the analyze task, per batch: requests seen, and the bytes clients fetched from the origin for objects
    that were not ready then, as far as a probe told their size (`count_requests`);
  * beat, once a minute (`schedule.stats`): the gauges (objects, bytes stored, disk free) and pruning.
Minute buckets are kept for two days (the 24-hour chart), hour buckets for ever (the 30-day chart and
the all-time totals survive purges, which remove an entry's own figures).

"Bytes saved" is what `cachetap simulate` calls it: bytes served from the cache minus the origin
bytes spent filling it; the gross figure (served bytes: origin bytes the clients did not fetch) is
shown beside it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from cachetap.core.lifecycle import EntryState
from cachetap.store.models import Entry, Stat

if TYPE_CHECKING:
    from cachetap.store.catalog import Catalog, EntryView

ENTRIES = Entry.__table__
STATS = Stat.__table__
MINUTE, HOUR = 60, 3600
KEEP = {MINUTE: 2 * 86400}  # hour buckets are kept for ever: one row an hour
COUNTERS = ("requests", "served_requests", "served_bytes", "fetched_bytes", "missed_bytes")
GAUGES = ("objects", "stored_bytes", "disk_free")
SORTS = {"hits": ENTRIES.c.hits, "size": sa.func.coalesce(ENTRIES.c.size, 0), "last_hit": ENTRIES.c.last_hit,
         "saved": ENTRIES.c.served_bytes - ENTRIES.c.fetched_bytes, "updated": ENTRIES.c.updated_at,
         "published": sa.func.coalesce(ENTRIES.c.published_at, 0)}


def add_to_buckets(conn: Connection, now: float, **figures: int) -> None:
    """Add counter figures to the minute and hour buckets holding `now` (one upsert each)."""
    figures = {name: int(value) for name, value in figures.items() if value}
    unknown = set(figures) - set(COUNTERS)
    if unknown:
        raise TypeError(f"not a stats counter: {sorted(unknown)}")
    if not figures:
        return
    for period in (MINUTE, HOUR):
        row = {"period": period, "bucket": float(now // period * period), **figures}
        conn.execute(_upsert(conn, row, {name: STATS.c[name] + _new(conn, row, name) for name in figures}))


def set_gauges(conn: Connection, now: float, **gauges: int | None) -> None:
    """Set the sampled gauges of the buckets holding `now` (the hour bucket keeps the last sample)."""
    for period in (MINUTE, HOUR):
        row = {"period": period, "bucket": float(now // period * period), **gauges}
        conn.execute(_upsert(conn, row, {name: _new(conn, row, name) for name in gauges}))


def _insert(conn: Connection, row: dict[str, Any]):
    dialect = conn.dialect.name
    if dialect in ("mysql", "mariadb"):
        return mysql.insert(STATS).values(row)
    if dialect in ("postgresql", "sqlite"):
        return (postgresql if dialect == "postgresql" else sqlite).insert(STATS).values(row)
    raise NotImplementedError(f"stats upsert is not written for {dialect}")


def _new(conn: Connection, row: dict[str, Any], name: str):
    """The value the INSERT would have written (for the conflict branch), as a bound parameter."""
    return sa.literal(row[name], STATS.c[name].type)


def _upsert(conn: Connection, row: dict[str, Any], updates: dict[str, Any]):
    stmt = _insert(conn, row)
    if conn.dialect.name in ("mysql", "mariadb"):
        return stmt.on_duplicate_key_update(**updates)
    return stmt.on_conflict_do_update(index_elements=[STATS.c.period, STATS.c.bucket], set_=updates)


def disk_free(catalog: Catalog, cache_dir, heartbeat_interval: float, now: float) -> int | None:
    """Free bytes on the disks of the live cache nodes, as their heartbeats report them; this
    machine's cache_dir when no cache node reports (a node alone before its first heartbeat)."""
    from cachetap.store.nodes import CACHE_ROLE, liveness_window

    disks = {(node.name, d.path): d.free for node in catalog.nodes.live(now, liveness_window(heartbeat_interval),
                                                                         role=CACHE_ROLE) for d in node.disks}
    if disks:
        return sum(disks.values())
    try:
        return shutil.disk_usage(cache_dir).free
    except OSError:
        return None


class Stats:
    """Reads and the writes that are not part of another transaction, over a `Catalog`'s engine."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.engine = catalog.engine

    # ---- writes ------------------------------------------------------------------------------------

    def count_fetched(self, key: str, nbytes: int, now: float) -> None:
        """Origin bytes one download of `key` took (its published size)."""
        def work(conn: Connection) -> None:
            conn.execute(sa.update(ENTRIES).where(ENTRIES.c.key == key)
                         .values(fetched_bytes=ENTRIES.c.fetched_bytes + int(nbytes)))
            add_to_buckets(conn, now, fetched_bytes=nbytes)
        self.catalog._write(work)

    def count_requests(self, counts: Mapping[str, int], now: float) -> int:
        """Requests seen per key (after they were counted); the ones for an object not ready, whose
        size a probe told, went to the origin: their bytes are `missed`. Returns the missed bytes."""
        keys = sorted(counts)
        if not keys:
            return 0

        def work(conn: Connection) -> int:
            rows = conn.execute(sa.select(ENTRIES.c.key, ENTRIES.c.size).where(
                ENTRIES.c.key.in_(keys), ENTRIES.c.state != EntryState.READY.value, ENTRIES.c.size.is_not(None)))
            missed = {key: counts[key] * size for key, size in rows if size > 0}
            if missed:
                conn.execute(sa.update(ENTRIES).where(ENTRIES.c.key == sa.bindparam("k"))
                             .values(missed_bytes=ENTRIES.c.missed_bytes + sa.bindparam("n")),
                             [{"k": k, "n": n} for k, n in sorted(missed.items())])
            add_to_buckets(conn, now, requests=sum(counts.values()), missed_bytes=sum(missed.values()))
            return sum(missed.values())
        return self.catalog._write(work)

    def sample(self, now: float, disk_free: int | None) -> dict[str, int | None]:
        """Record the gauges now (objects and bytes ready, disk free); returns them."""
        objects, stored = self.ready_totals()
        gauges = {"objects": objects, "stored_bytes": stored, "disk_free": disk_free}
        self.catalog._write(lambda conn: set_gauges(conn, now, **gauges))
        return gauges

    def ready_totals(self) -> tuple[int, int]:
        """(objects, bytes) stored and ready now."""
        with self.engine.connect() as conn:
            objects, stored = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(ENTRIES.c.stored_size), 0))
                .where(ENTRIES.c.state == EntryState.READY.value)).one()
        return int(objects), int(stored)

    def prune(self, now: float) -> int:
        """Delete minute buckets older than two days; returns how many."""
        stmt = sa.delete(STATS).where(STATS.c.period == MINUTE, STATS.c.bucket < now - KEEP[MINUTE])
        return self.catalog._write(lambda conn: conn.execute(stmt).rowcount)

    # ---- reads -------------------------------------------------------------------------------------

    def series(self, period: int, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """Buckets of `period` from `since` on, oldest first (missing buckets are simply absent)."""
        stmt = sa.select(STATS).where(STATS.c.period == int(period), STATS.c.bucket >= since)
        if until is not None:
            stmt = stmt.where(STATS.c.bucket < until)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt.order_by(STATS.c.bucket))]

    def totals(self, since: float | None = None) -> dict[str, int]:
        """Counter sums over the hour buckets from `since` (an hour boundary) on; all time without."""
        stmt = sa.select(*[sa.func.coalesce(sa.func.sum(STATS.c[name]), 0).label(name) for name in COUNTERS]
                         ).where(STATS.c.period == HOUR)
        if since is not None:
            stmt = stmt.where(STATS.c.bucket >= since)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).one()._mapping
        return {name: int(row[name]) for name in COUNTERS}

    def rate(self, name: str, seconds: int, now: float | None = None) -> float:
        """A counter's average per second over the last `seconds` of whole minute buckets."""
        now = time.time() if now is None else now
        end = now // MINUTE * MINUTE
        stmt = sa.select(sa.func.coalesce(sa.func.sum(STATS.c[name]), 0)).where(
            STATS.c.period == MINUTE, STATS.c.bucket >= end - seconds, STATS.c.bucket < end)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one()) / seconds

    def latest_gauges(self) -> dict[str, int | None]:
        stmt = (sa.select(*[STATS.c[name] for name in GAUGES], STATS.c.bucket)
                .where(STATS.c.period == MINUTE, STATS.c.objects.is_not(None))
                .order_by(STATS.c.bucket.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return dict(row._mapping) if row is not None else {name: None for name in GAUGES} | {"bucket": None}

    def find(self, text: str = "", sort: str = "last_hit", state: str | None = None,
             limit: int = 100) -> list[EntryView]:
        """Entries whose URL or host contains `text`, in `state` if given, the top `limit` by `sort`
        (one of SORTS, largest or latest first)."""
        from cachetap.store.catalog import EntryView

        stmt = sa.select(ENTRIES)
        if text:
            stmt = stmt.where(sa.or_(ENTRIES.c.url.contains(text, autoescape=True),
                                     ENTRIES.c.host.contains(text.lower(), autoescape=True)))
        if state is not None:
            stmt = stmt.where(ENTRIES.c.state == EntryState(state).value)
        stmt = stmt.order_by(SORTS[sort].desc(), ENTRIES.c.id.desc()).limit(max(0, int(limit)))
        with self.engine.connect() as conn:
            return [EntryView.from_row(row) for row in conn.execute(stmt)]

    def hosts(self, order: str, limit: int = 20) -> list[dict[str, Any]]:
        """Hosts with their figures, the top `limit` by `order` ("saved" or "missed")."""
        saved = (sa.func.sum(ENTRIES.c.served_bytes) - sa.func.sum(ENTRIES.c.fetched_bytes)).label("saved_bytes")
        missed = sa.func.sum(ENTRIES.c.missed_bytes).label("missed_bytes")
        stmt = sa.select(ENTRIES.c.host, sa.func.count().label("objects"),
                         sa.func.sum(ENTRIES.c.hits).label("hits"),
                         sa.func.sum(ENTRIES.c.served_bytes).label("served_bytes"),
                         sa.func.sum(ENTRIES.c.fetched_bytes).label("fetched_bytes"), saved, missed
                         ).group_by(ENTRIES.c.host)
        stmt = stmt.order_by((saved if order == "saved" else missed).desc(), ENTRIES.c.host).limit(max(0, int(limit)))
        with self.engine.connect() as conn:
            return [{k: (v if k == "host" else int(v or 0)) for k, v in row._mapping.items()}
                    for row in conn.execute(stmt)]
