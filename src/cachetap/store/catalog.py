"""The catalog repository: every read and write of `entries` and `hits` goes through `Catalog`.

Values that came off the wire (URLs, hosts, headers) reach SQL only as bound parameters. Each
method is one short transaction. Writes that many processes make at once are single statements
whose outcome the database decides: an upsert per key for sightings, a conditional UPDATE for
claims, so exactly one worker wins whatever the interleaving.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from cachetap.core.eviction import EntryStat
from cachetap.core import lifecycle
from cachetap.core.lifecycle import EntryState, Event
from cachetap.core.keys import KEY_PATTERN, url_filename
from cachetap.core.types import Sighting
from cachetap.store.db import is_transient, make_engine, upgrade, writer
from cachetap.store.models import Entry, Hit, Secret
from cachetap.store.nodes import NodeRegistry
from cachetap.store.stats import add_to_buckets

ENTRIES = Entry.__table__
HITS = Hit.__table__
SECRETS = Secret.__table__
STATES = frozenset(s.value for s in EntryState)
PROBE_FIELDS = ("size", "content_type", "etag", "last_modified", "cache_control")
# Columns a caller may set through mark() and set_fields(); identity, state and reason have their own
# arguments, and the state changes only by an event of core.lifecycle's table.
MARKABLE = frozenset(c.name for c in ENTRIES.columns) - {"id", "key", "state", "reason"}
TRANSIENT_RETRIES = 5
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EntryView:
    """A snapshot of one `entries` row (not a live ORM object: safe to keep and pass around)."""

    id: int
    key: str
    url: str
    host: str
    filename: str
    state: str
    reason: str | None
    hits: int
    first_seen: float
    last_hit: float
    size: int | None
    content_type: str | None
    etag: str | None
    last_modified: str | None
    cache_control: str | None
    expires_at: float | None
    refreshed_at: float | None
    claim_token: str | None
    claimed_at: float | None
    claimed_by: str | None
    attempts: int
    blob: str | None
    node: str | None
    disk: str | None
    stored_size: int | None
    published_at: float | None
    bytes_done: int
    speed: int
    task_id: str | None
    served_bytes: int
    fetched_bytes: int
    missed_bytes: int
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sa.Row) -> EntryView:
        data = row._mapping
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"not a cache key (32 lower-case hex characters): {key!r}")
    return key


def _check_state(state: str) -> str:
    if state not in STATES:
        raise ValueError(f"unknown entry state {state!r}; one of {sorted(STATES)}")
    return str(state)


def _check_fields(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - MARKABLE
    if unknown:
        raise TypeError(f"unknown entry fields: {sorted(unknown)}")


def _clip(value: str, column: str, table: sa.Table = ENTRIES) -> str:
    """Cut a display value from the wire to its column, or a server would reject the whole batch."""
    length = table.c[column].type.length
    return value[:length]


def _fits(value: Any, column: str) -> Any:
    """A validator (ETag, Last-Modified...) too long for its column is dropped, never cut: a cut
    validator would be a wrong one."""
    if isinstance(value, str) and len(value) > ENTRIES.c[column].type.length:
        return None
    return value


def open_catalog(database_url: str) -> Catalog:
    """The catalog at `database_url`, its schema migrated to the newest revision first (every process
    that uses a catalog opens it here: CLI commands, workers, the cache server)."""
    engine = make_engine(database_url)
    upgrade(engine)
    return Catalog(engine)


class Catalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self.nodes = NodeRegistry(engine)  # the cluster's node registry (store/nodes.py)

    # ---- helpers ------------------------------------------------------------------------------

    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction, again if the database chose it as a deadlock victim."""
        for attempt in range(TRANSIENT_RETRIES):
            try:
                with self._writer.begin() as conn:
                    return work(conn)
            except sa.exc.DBAPIError as exc:
                if not is_transient(exc) or attempt == TRANSIENT_RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def write(self, work: Callable[[Connection], T]) -> T:
        """One write transaction for a repository beside this one (store/leases.py)."""
        return self._write(work)

    def _upsert_entry(self, values: dict[str, Any]) -> sa.Executable:
        """INSERT the entry, or on a duplicate key add its hits and move last_hit forward."""
        dialect = self.engine.dialect.name
        if dialect in ("mysql", "mariadb"):
            stmt = mysql.insert(ENTRIES).values(values)
            new = stmt.inserted
        elif dialect in ("postgresql", "sqlite"):
            stmt = (postgresql if dialect == "postgresql" else sqlite).insert(ENTRIES).values(values)
            new = stmt.excluded
        else:
            raise NotImplementedError(f"catalog upsert is not written for {dialect}")
        # On MySQL later assignments see earlier ones: each refers only to its own column.
        updates = {
            "hits": ENTRIES.c.hits + new.hits,
            "last_hit": sa.case((new.last_hit > ENTRIES.c.last_hit, new.last_hit), else_=ENTRIES.c.last_hit),
            "updated_at": new.updated_at,
        }
        if dialect in ("mysql", "mariadb"):
            return stmt.on_duplicate_key_update(**updates)
        return stmt.on_conflict_do_update(index_elements=[ENTRIES.c.key], set_=updates)

    # ---- counting -----------------------------------------------------------------------------

    def record_sightings(self, sightings: list[Sighting], window: float, now: float) -> dict[str, int]:
        """Count requests: one entry per key (new ones start `counting`), one `hits` row each.

        Returns key -> number of hits with `now - window <= ts <= now`, for every key in the batch.
        Sightings may also be given as dicts (`Sighting.to_dict()`, as they travel through Celery).
        """
        sightings = [Sighting.from_dict(s) if isinstance(s, Mapping) else s for s in sightings]
        by_key: dict[str, list[Sighting]] = {}
        for s in sightings:
            by_key.setdefault(_check_key(s.key), []).append(s)
        if not by_key:
            return {}
        keys = sorted(by_key)  # same lock order in every transaction: no deadlock between batches

        def work(conn: Connection) -> dict[str, int]:
            for key in keys:
                group = by_key[key]
                first = group[0]
                conn.execute(self._upsert_entry({
                    "key": key, "url": first.url, "host": _clip(first.host, "host"),
                    "filename": _clip(url_filename(first.url), "filename"), "state": EntryState.COUNTING.value,
                    "hits": len(group), "first_seen": min(s.ts for s in group),
                    "last_hit": max(s.ts for s in group), "created_at": now, "updated_at": now,
                }))
            conn.execute(HITS.insert(), [
                {"key": s.key, "ts": s.ts, "client": _clip(s.client, "client", HITS)} for s in sightings
            ])
            rows = conn.execute(
                sa.select(HITS.c.key, sa.func.count())
                .where(HITS.c.key.in_(keys), HITS.c.ts >= now - window, HITS.c.ts <= now)
                .group_by(HITS.c.key)
            )
            counts = dict.fromkeys(keys, 0)
            counts.update({key: n for key, n in rows})
            return counts

        return self._write(work)

    def add_hits(self, counts: Mapping[str, int], now: float, served_bytes: Mapping[str, int] | None = None) -> int:
        """Add requests served from the cache (and the body bytes sent for them) to existing entries
        and to the console's time series (no `hits` rows); returns rows changed."""
        served_bytes = served_bytes or {}
        items = sorted((_check_key(k), int(n), int(served_bytes.get(k, 0))) for k, n in counts.items() if n > 0)
        if not items:
            return 0
        stmt = (
            sa.update(ENTRIES).where(ENTRIES.c.key == sa.bindparam("k"))
            .values(hits=ENTRIES.c.hits + sa.bindparam("n"),
                    served_bytes=ENTRIES.c.served_bytes + sa.bindparam("b"),
                    last_hit=sa.case((ENTRIES.c.last_hit < now, now), else_=ENTRIES.c.last_hit))
        )

        def work(conn: Connection) -> int:
            changed = conn.execute(stmt, [{"k": k, "n": n, "b": b} for k, n, b in items]).rowcount
            add_to_buckets(conn, now, served_requests=sum(n for _, n, _ in items),
                           served_bytes=sum(b for _, _, b in items))
            return changed
        return self._write(work)

    def prune_hits(self, before: float) -> int:
        """Delete `hits` rows older than `before`; returns how many."""
        return self._write(lambda conn: conn.execute(sa.delete(HITS).where(HITS.c.ts < before)).rowcount)

    # ---- claims and state ---------------------------------------------------------------------

    def _moving(self, event: Event, from_states: Any = None) -> tuple[sa.ColumnElement, Any]:
        """(WHERE clause, new state) of `event` applied per core.lifecycle's table: the row must be in
        one of the move's start states, and each start state gets its own next state. Raises
        IllegalTransition before anything is written when the caller asks for a move the table lacks."""
        found = lifecycle.moves(event, from_states)
        where = ENTRIES.c.state.in_(sorted(state.value for state in found))
        targets = set(found.values())
        if len(targets) == 1:
            return where, targets.pop().value
        return where, sa.case({start.value: end.value for start, end in found.items()}, value=ENTRIES.c.state)

    def claim(self, key: str, from_states: Collection[str], token: str, now: float, stale_after: float) -> bool:
        """Take the probe claim of `key` (the CLAIM event) from one of `from_states` under `token`;
        True for the one winner.

        A probing claim older than `stale_after` seconds (its worker vanished) may be taken again. One
        conditional UPDATE: the database picks exactly one winner.
        """
        where, probing = self._moving(Event.CLAIM, from_states)
        lifecycle.advance(probing, Event.CLAIM)  # retaking a stale claim is a move of the table too
        stale = sa.and_(ENTRIES.c.state == probing,
                        sa.or_(ENTRIES.c.claimed_at.is_(None), ENTRIES.c.claimed_at < now - stale_after))
        stmt = (
            sa.update(ENTRIES)
            .where(ENTRIES.c.key == _check_key(key), sa.or_(where, stale))
            .values(state=probing, claim_token=token, claimed_at=now, updated_at=now)
        )
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    def advance_claim(self, key: str, token: str, from_state: str, event: Event, now: float,
                      idle_for: float | None = None) -> bool:
        """Apply `event` to a claim held under `token` in `from_state`, renewing claimed_at and
        counting an attempt; True for the one winner. With `idle_for`, only a claim not renewed for
        that many seconds is taken (a re-delivered job taking over from a worker that vanished).
        One conditional UPDATE, so of two deliveries of the same job exactly one proceeds."""
        where, to_state = self._moving(event, from_state)
        stmt = sa.update(ENTRIES).where(ENTRIES.c.key == _check_key(key), ENTRIES.c.claim_token == token, where)
        if idle_for is not None:
            stmt = stmt.where(sa.or_(ENTRIES.c.claimed_at.is_(None), ENTRIES.c.claimed_at < now - idle_for))
        stmt = stmt.values(state=to_state, claimed_at=now, updated_at=now, attempts=ENTRIES.c.attempts + 1)
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    def mark(self, key: str, event: Event, from_states: Any = None, *, reason: str | None = None,
             token: str | None = None, **fields: Any) -> bool:
        """Apply `event` (core.lifecycle's table decides the new state), set the reason and any other
        columns given; only from `from_states` (a state or several; default: every state the event
        may start from), and with `token` only while that claim is held. Returns whether the entry
        changed: False when it was in none of those states (it moved on meanwhile). Raises
        IllegalTransition, writing nothing, for a move the table does not have; TypeError for
        unknown field names."""
        _check_fields(fields)
        where, state = self._moving(event, from_states)
        values = {"updated_at": time.time(), **fields, "state": state, "reason": reason}
        stmt = sa.update(ENTRIES).where(ENTRIES.c.key == _check_key(key), where)
        if token is not None:
            stmt = stmt.where(ENTRIES.c.claim_token == token)
        return self._write(lambda conn: conn.execute(stmt.values(values)).rowcount == 1)

    def set_fields(self, key: str, states: Collection[str], token: str | None = None, **fields: Any) -> bool:
        """Set columns (never the state) while the entry is in one of `states`, and with `token` only
        while that claim is held; True when it was."""
        _check_fields(fields)
        stmt = sa.update(ENTRIES).where(ENTRIES.c.key == _check_key(key),
                                        ENTRIES.c.state.in_([_check_state(s) for s in states]))
        if token is not None:
            stmt = stmt.where(ENTRIES.c.claim_token == token)
        values = {"updated_at": time.time(), **fields}
        return self._write(lambda conn: conn.execute(stmt.values(values)).rowcount == 1)

    def set_probe(self, key: str, probe: Mapping[str, Any] | Any, event: Event | None = None,
                  reason: str | None = None, token: str | None = None, **fields: Any) -> bool:
        """Store what the HEAD probe found (size, content_type, etag, last_modified, cache_control).

        `probe` is a mapping or an object with those attributes (`core.admission.ProbeResult`).
        With `event` (a probe outcome), the state moves by the lifecycle's table and the reason and
        other `fields` are set too; with `token`, only while that claim is held.
        """
        _check_fields(fields)
        get = probe.get if isinstance(probe, Mapping) else (lambda name: getattr(probe, name, None))
        values: dict[str, Any] = {name: _fits(get(name), name) for name in PROBE_FIELDS if name != "size"}
        size = get("size")
        values["size"] = None if size is None or size < 0 else int(size)
        values.update(fields, updated_at=time.time())
        stmt = sa.update(ENTRIES).where(ENTRIES.c.key == _check_key(key))
        if event is not None:
            where, state = self._moving(event)
            values.update(state=state, reason=reason)
            stmt = stmt.where(where)
        stmt = stmt.values(values)
        if token is not None:
            stmt = stmt.where(ENTRIES.c.claim_token == token)
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    def remove(self, key: str) -> bool:
        """Delete the entry and its hits; True if there was one."""
        def work(conn: Connection) -> bool:
            conn.execute(sa.delete(HITS).where(HITS.c.key == key))
            return conn.execute(sa.delete(ENTRIES).where(ENTRIES.c.key == key)).rowcount == 1
        _check_key(key)
        return self._write(work)

    # ---- reads --------------------------------------------------------------------------------

    def _select(self, stmt: sa.Select) -> list[EntryView]:
        with self.engine.connect() as conn:
            return [EntryView.from_row(row) for row in conn.execute(stmt)]

    def shared_secret(self, name: str) -> bytes:
        """The secret `name` (32 random bytes), made by the first node that asks and then the same
        for every node of the cluster, since they all read this catalog."""
        stmt = sa.select(SECRETS.c.value).where(SECRETS.c.name == name)
        with self.engine.connect() as conn:
            found = conn.execute(stmt).scalar()
        if found is None:
            try:
                self._write(lambda conn: conn.execute(SECRETS.insert().values(
                    name=name, value=secrets.token_hex(32), created_at=time.time())))
            except sa.exc.IntegrityError:
                pass  # another node made it first: read theirs
            with self.engine.connect() as conn:
                found = conn.execute(stmt).scalar_one()
        return bytes.fromhex(found)

    def get(self, key: str) -> EntryView | None:
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            return None  # a malformed key names no entry
        found = self._select(sa.select(ENTRIES).where(ENTRIES.c.key == key))
        return found[0] if found else None

    def by_task_id(self, task_id: str) -> EntryView | None:
        rows = self._select(sa.select(ENTRIES).where(ENTRIES.c.task_id == str(task_id)[:64]).limit(1))
        return rows[0] if rows else None

    def entries(self, limit: int = 100, state: str | None = None) -> list[EntryView]:
        """Entries most recently requested first."""
        stmt = sa.select(ENTRIES).order_by(ENTRIES.c.last_hit.desc(), ENTRIES.c.id.desc()).limit(max(0, int(limit)))
        if state is not None:
            stmt = stmt.where(ENTRIES.c.state == _check_state(state))
        return self._select(stmt)

    def counts_by_state(self) -> dict[str, int]:
        """Entries per state; every known state is present (0 when empty)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ENTRIES.c.state, sa.func.count()).group_by(ENTRIES.c.state))
            counts = dict.fromkeys(sorted(STATES), 0)
            counts.update({state: n for state, n in rows})
            return counts

    def stale_claims(self, now: float, stale_after: float, states: Iterable[str]) -> list[EntryView]:
        """Entries in `states` whose claim is older than `stale_after` seconds (or missing)."""
        states = [_check_state(s) for s in states]
        return self._select(
            sa.select(ENTRIES)
            .where(ENTRIES.c.state.in_(states),
                   sa.or_(ENTRIES.c.claimed_at.is_(None), ENTRIES.c.claimed_at < now - stale_after))
            .order_by(ENTRIES.c.claimed_at)
        )

    def claims_held_on(self, host: str, states: Iterable[str]) -> list[EntryView]:
        """Entries in `states` whose claim a process on `host` holds (`claimed_by` "<host>:<pid>")."""
        states = [_check_state(s) for s in states]
        return self._select(sa.select(ENTRIES).where(ENTRIES.c.state.in_(states),
                                                     ENTRIES.c.claimed_by.like(f"{host}:%")))

    def retake(self, key: str, old_token: str, new_token: str, now: float) -> bool:
        """Replace the claim `old_token` by `new_token` (its holder died); True for the one winner."""
        stmt = (sa.update(ENTRIES)
                .where(ENTRIES.c.key == _check_key(key), ENTRIES.c.claim_token == old_token)
                .values(claim_token=new_token, claimed_at=now, claimed_by=None, updated_at=now))
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    def ready_keys(self, now: float, chunk: int = 10_000) -> Iterator[tuple[str, float | None, str | None]]:
        """(key, expires_at, node holding it) of what the cache servers would serve now (ready, not
        expired), streamed for a capture's index."""
        stmt = (sa.select(ENTRIES.c.key, ENTRIES.c.expires_at, ENTRIES.c.node)
                .where(ENTRIES.c.state == EntryState.READY.value,
                       sa.or_(ENTRIES.c.expires_at.is_(None), ENTRIES.c.expires_at > now))
                .execution_options(yield_per=chunk))
        with self.engine.connect() as conn:
            for key, expires, node in conn.execute(stmt):
                yield key, expires, node

    # ---- housekeeping (tasks/housekeeping.py, store/evict.py) -------------------------------------

    def stored_bytes(self, disk: str | None = None, default_disk: str | None = None, node: str | None = None) -> int:
        """Bytes held by ready entries (summed in the database, no row loaded); with `disk`, those on
        that disk of `node` (rows without a disk are on `default_disk`)."""
        stmt = sa.select(sa.func.coalesce(sa.func.sum(ENTRIES.c.stored_size), 0)).where(
            ENTRIES.c.state == EntryState.READY.value)
        if disk is not None:
            stmt = stmt.where(self.held_on(disk, default_disk, node))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    @staticmethod
    def held_on(disk: str, default_disk: str | None, node: str | None) -> sa.ColumnElement[bool]:
        on_disk = ENTRIES.c.disk == disk
        if disk == default_disk:
            on_disk = sa.or_(on_disk, ENTRIES.c.disk.is_(None))
        if node is None:
            return on_disk
        return sa.and_(on_disk, sa.or_(ENTRIES.c.node.is_(None), ENTRIES.c.node == node))

    def entry_stats(self, states: Iterable[str], fewer_hits_than: int | None = None,
                    last_hit_before: float | None = None, node: str | None = None) -> list[EntryStat]:
        """Light rows for the eviction policy, optionally pre-filtered the way the cleanup rule is;
        with `node`, only the objects that node holds (or that no node was recorded for)."""
        cols = [ENTRIES.c[name] for name in ("key", "hits", "last_hit", "stored_size", "published_at",
                                             "blob", "state", "disk")]
        stmt = sa.select(*cols).where(ENTRIES.c.state.in_([_check_state(s) for s in states]))
        if node is not None:
            stmt = stmt.where(sa.or_(ENTRIES.c.node.is_(None), ENTRIES.c.node == node))
        if fewer_hits_than is not None:
            stmt = stmt.where(ENTRIES.c.hits < fewer_hits_than)
        if last_hit_before is not None:
            stmt = stmt.where(ENTRIES.c.last_hit <= last_hit_before)
        with self.engine.connect() as conn:
            return [EntryStat(**row._mapping) for row in conn.execute(stmt.order_by(ENTRIES.c.id))]

    def expired(self, now: float, limit: int) -> list[EntryView]:
        """Ready entries whose freshness ended at or before `now`, the longest expired first."""
        return self._select(
            sa.select(ENTRIES)
            .where(ENTRIES.c.state == EntryState.READY.value, ENTRIES.c.expires_at <= now)
            .order_by(ENTRIES.c.expires_at, ENTRIES.c.id).limit(max(0, int(limit)))
        )

    @staticmethod
    def _on_disk(stmt: sa.Select, disk: str | None) -> sa.Select:
        # A row without a disk (recorded before disks were) may be on any: it keeps the blob everywhere.
        return stmt if disk is None else stmt.where(sa.or_(ENTRIES.c.disk.is_(None), ENTRIES.c.disk == disk))

    def blob_references(self, disk: str | None = None) -> set[str]:
        """Every blob digest some entry (in any state) names; with `disk`, on that disk."""
        stmt = self._on_disk(sa.select(ENTRIES.c.blob).where(ENTRIES.c.blob.is_not(None)).distinct(), disk)
        with self.engine.connect() as conn:
            return {b for (b,) in conn.execute(stmt)}

    def blob_referenced(self, digest: str, disk: str | None = None) -> bool:
        stmt = self._on_disk(sa.select(ENTRIES.c.id).where(ENTRIES.c.blob == digest), disk).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(stmt).first() is not None

    def remove_if(self, key: str, state: str, blob: str | None) -> bool:
        """Delete the entry (and its hits) only while it is still in `state` with `blob`: a row that
        moved on since the caller looked (re-admitted, re-published) is left alone."""
        _check_key(key)
        match = sa.and_(ENTRIES.c.key == key, ENTRIES.c.state == _check_state(state),
                        ENTRIES.c.blob.is_(None) if blob is None else ENTRIES.c.blob == blob)

        def work(conn: Connection) -> bool:
            if conn.execute(sa.delete(ENTRIES).where(match)).rowcount != 1:
                return False
            conn.execute(sa.delete(HITS).where(HITS.c.key == key))
            return True
        return self._write(work)

    def expired_among(self, keys: Collection[str], now: float) -> list[EntryView]:
        """The ready entries among `keys` that are past their freshness (requested, so revalidate)."""
        keys = [_check_key(k) for k in keys]
        if not keys:
            return []
        return self._select(sa.select(ENTRIES).where(ENTRIES.c.key.in_(keys),
                                                     ENTRIES.c.state == EntryState.READY.value,
                                                     ENTRIES.c.expires_at <= now))

    def begin_revalidation(self, key: str, token: str, now: float, lease: float) -> bool:
        """Take the revalidation of an expired ready entry; True for the one winner.

        A ready entry's claim columns hold the revalidation in progress (a ready entry has no other
        claim), so there is one conditional request per key at a time; one whose worker vanished
        may be taken again after `lease` seconds.
        """
        stmt = (sa.update(ENTRIES)
                .where(ENTRIES.c.key == _check_key(key), ENTRIES.c.state == EntryState.READY.value,
                       ENTRIES.c.expires_at <= now,
                       sa.or_(ENTRIES.c.claim_token.is_(None), ENTRIES.c.claimed_at.is_(None),
                              ENTRIES.c.claimed_at < now - lease))
                .values(claim_token=token, claimed_at=now))
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    def end_revalidation(self, key: str, token: str, reason: str | None) -> bool:
        """Release a revalidation that did not refresh the entry, keeping why (shown by `ls`)."""
        stmt = (sa.update(ENTRIES)
                .where(ENTRIES.c.key == _check_key(key), ENTRIES.c.claim_token == token)
                .values(claim_token=None, claimed_at=None, reason=None if reason is None else reason[:500],
                        updated_at=time.time()))
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    def refresh(self, key: str, blob: str, expires_at: float, cache_control: str | None = None) -> bool:
        """Extend a revalidated entry's freshness (and its Cache-Control when the origin sent one),
        only while it is still ready with the same blob; ends its revalidation claim."""
        now = time.time()
        values: dict[str, Any] = {"expires_at": expires_at, "updated_at": now, "claim_token": None,
                                  "claimed_at": None, "reason": None, "refreshed_at": now}
        if cache_control is not None:
            values["cache_control"] = _fits(cache_control, "cache_control")
        stmt = (sa.update(ENTRIES)
                .where(ENTRIES.c.key == _check_key(key), ENTRIES.c.state == EntryState.READY.value,
                       ENTRIES.c.blob == blob)
                .values(values))
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    def take_refresh(self, key: str, refreshed_at: float) -> bool:
        """Claim the first answer after the revalidation at `refreshed_at`: True for exactly one caller
        across processes and nodes (a conditional UPDATE), which logs it TCP_REFRESH_HIT."""
        stmt = (sa.update(ENTRIES)
                .where(ENTRIES.c.key == _check_key(key), ENTRIES.c.refreshed_at == refreshed_at)
                .values(refreshed_at=None))
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)
