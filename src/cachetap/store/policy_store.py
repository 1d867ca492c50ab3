"""The catalog as a `core.policy.PolicyStore`: the policy state every worker shares.

Victims are read with `ORDER BY priority LIMIT n` on the (queue, priority) index (and the record
requested longest ago on the (queue, last) index), so choosing them costs the same among a million
records as among ten. A policy decision reads and writes several rows and values, so
`CatalogPolicyStore.transaction()` runs it in one transaction that first locks a row of
`policy_values` (SELECT ... FOR UPDATE; SQLite's write lock does the same), which makes the decisions
of concurrent workers happen one after the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from cachetap.core.policy.base import GHOST, Record
from cachetap.store.db import writer
from cachetap.core.lifecycle import EntryState
from cachetap.store.models import Entry, PolicyRecord, PolicyValue

RECORDS = PolicyRecord.__table__
VALUES = PolicyValue.__table__
LOCK = "lock"


class CatalogPolicyStore:
    """`only`: a condition on the entries table that limits the residents `lowest` offers (the
    ready objects of one disk, for that disk's quota), so the policy picks its victims there in its
    own order. History (the ghost queue) and the shared values stay whole."""

    def __init__(self, engine: Engine, only: sa.ColumnElement[bool] | None = None) -> None:
        self.engine = engine
        self.only = only
        self._conn: Connection | None = None

    @contextmanager
    def transaction(self) -> Iterator[CatalogPolicyStore]:
        """Run the policy calls inside one locked transaction (nesting joins the outer one)."""
        if self._conn is not None:
            yield self
            return
        with writer(self.engine).begin() as conn:
            self._upsert(conn, VALUES, {"name": LOCK, "value": 0.0}, ["name"], {"value": VALUES.c.value})
            conn.execute(sa.select(VALUES.c.value).where(VALUES.c.name == LOCK).with_for_update())
            self._conn = conn
            try:
                yield self
            finally:
                self._conn = None

    @contextmanager
    def _use(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
        else:
            with writer(self.engine).begin() as conn:
                yield conn

    def _upsert(self, conn: Connection, table: sa.Table, values: dict, index: list[str], updates: dict) -> None:
        dialect = conn.dialect.name
        if dialect in ("mysql", "mariadb"):
            conn.execute(mysql.insert(table).values(values).on_duplicate_key_update(**updates))
            return
        module = postgresql if dialect == "postgresql" else sqlite
        conn.execute(module.insert(table).values(values).on_conflict_do_update(index_elements=index, set_=updates))

    def get(self, key: str) -> Record | None:
        with self._use() as conn:
            row = conn.execute(sa.select(RECORDS).where(RECORDS.c.key == key)).first()
        return None if row is None else _record(row)

    def put(self, key: str, record: Record) -> None:
        values = {"key": key, "queue": record.queue, "priority": record.priority, "size": int(record.size),
                  "freq": record.freq, "last": record.last}
        with self._use() as conn:
            stmt_values = {k: v for k, v in values.items() if k != "key"}
            self._upsert(conn, RECORDS, values, ["key"], stmt_values)

    def remove(self, key: str) -> None:
        with self._use() as conn:
            conn.execute(sa.delete(RECORDS).where(RECORDS.c.key == key))

    def lowest(self, queue: str, limit: int) -> list[tuple[str, Record]]:
        return self._first(queue, RECORDS.c.priority, limit)

    def oldest(self, queue: str) -> tuple[str, Record] | None:
        found = self._first(queue, RECORDS.c.last, 1)
        return found[0] if found else None

    def _first(self, queue: str, order: sa.Column, limit: int) -> list[tuple[str, Record]]:
        """The first `limit` records of `queue` by `order` (each has a (queue, column) index)."""
        stmt = sa.select(RECORDS).where(RECORDS.c.queue == queue)
        if self.only is not None and queue != GHOST:
            entries = Entry.__table__
            stmt = stmt.select_from(RECORDS.join(entries, entries.c.key == RECORDS.c.key)).where(self.only)
        with self._use() as conn:
            rows = conn.execute(stmt.order_by(order, RECORDS.c.key).limit(limit)).all()
        return [(row.key, _record(row)) for row in rows]

    def value(self, name: str) -> float:
        with self._use() as conn:
            found = conn.execute(sa.select(VALUES.c.value).where(VALUES.c.name == name)).scalar()
        return float(found) if found is not None else 0.0

    def set_value(self, name: str, value: float) -> None:
        with self._use() as conn:
            self._upsert(conn, VALUES, {"name": name, "value": value}, ["name"], {"value": value})

    def untracked_ready(self, limit: int, after: tuple[float, str] | None = None) -> list[tuple[float, str, int]]:
        """(last_hit, key, stored_size) of ready entries with no policy record (within `only`), least
        recently hit first, `limit` at a time after `after` (entries stored while their reservation
        was dropped, or before the policy tracked them)."""
        entries = Entry.__table__
        stmt = (sa.select(entries.c.last_hit, entries.c.key, entries.c.stored_size)
                .select_from(entries.outerjoin(RECORDS, RECORDS.c.key == entries.c.key))
                .where(entries.c.state == EntryState.READY.value, RECORDS.c.key.is_(None))
                .order_by(entries.c.last_hit, entries.c.key).limit(limit))
        if after is not None:
            stmt = stmt.where(sa.tuple_(entries.c.last_hit, entries.c.key) > sa.tuple_(*after))
        if self.only is not None:
            stmt = stmt.where(self.only)
        with self.engine.connect() as conn:
            return [(float(r.last_hit or 0.0), r.key, int(r.stored_size or 0)) for r in conn.execute(stmt)]

    def rescale(self, factor: float) -> None:
        with self._use() as conn:
            conn.execute(sa.update(RECORDS).values(
                priority=RECORDS.c.last + (RECORDS.c.priority - RECORDS.c.last) * factor))


def _record(row: sa.Row) -> Record:
    return Record(size=int(row.size), queue=row.queue, priority=float(row.priority), freq=float(row.freq),
                  last=float(row.last))
