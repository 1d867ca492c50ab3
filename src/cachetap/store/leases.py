"""Leases and the record of scheduled task runs, in the catalog every node shares.

A lease is a row: `acquire` is one conditional UPDATE (taken when free, expired or already ours),
then an INSERT when no row exists yet, so exactly one holder wins on SQLite, PostgreSQL and MySQL
alike whatever the interleaving. A holder that dies silently loses the lease when `expires_at`
passes. Times are each node's wall clock: nodes must keep their clocks in step (NTP) to well
within a lease's length.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cachetap.store.catalog import Catalog
from cachetap.store.models import Lease, TaskRun

LEASES = Lease.__table__
RUNS = TaskRun.__table__


@dataclass(frozen=True, slots=True)
class Run:
    task: str
    node: str
    started_at: float
    ended_at: float | None
    outcome: str | None


class Leases:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def acquire(self, name: str, holder: str, now: float, duration: float) -> bool:
        """Take or renew lease `name` for `holder` until `now + duration`; True while it is ours."""
        mine_or_free = sa.or_(LEASES.c.holder == holder, LEASES.c.expires_at < now)
        # In this order: MySQL's SET sees earlier assignments, so acquired_at reads the old holder.
        taken = (sa.update(LEASES).where(LEASES.c.name == name, mine_or_free)
                 .ordered_values((LEASES.c.acquired_at,
                                  sa.case((LEASES.c.holder == holder, LEASES.c.acquired_at), else_=now)),
                                 (LEASES.c.holder, holder), (LEASES.c.renewed_at, now),
                                 (LEASES.c.expires_at, now + duration)))

        def work(conn: Connection) -> bool:
            if conn.execute(taken).rowcount == 1:
                return True
            if conn.execute(sa.select(LEASES.c.name).where(LEASES.c.name == name)).first() is not None:
                return False  # someone else holds it
            conn.execute(LEASES.insert().values(name=name, holder=holder, acquired_at=now, renewed_at=now,
                                                expires_at=now + duration))
            return True
        try:
            return self.catalog.write(work)
        except sa.exc.IntegrityError:
            return False  # another process inserted the row first: theirs

    def release(self, name: str, holder: str) -> bool:
        """Give the lease up at once (a clean stop), only if `holder` still has it."""
        stmt = sa.delete(LEASES).where(LEASES.c.name == name, LEASES.c.holder == holder)
        return self.catalog.write(lambda conn: conn.execute(stmt).rowcount == 1)

    def holder(self, name: str, now: float) -> str | None:
        """Who holds `name` now (None when nobody does or the lease ran out)."""
        stmt = sa.select(LEASES.c.holder).where(LEASES.c.name == name, LEASES.c.expires_at >= now)
        with self.catalog.engine.connect() as conn:
            return conn.execute(stmt).scalar()


class TaskRuns:
    """Every run of a scheduled task: who ran it and when, so that a new beat knows what ran last and
    an operator (or a test) can count runs per interval."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def started(self, task: str, node: str, now: float) -> int:
        stmt = RUNS.insert().values(task=task[:64], node=node[:128], started_at=now)
        return self.catalog.write(lambda conn: conn.execute(stmt).inserted_primary_key[0])

    def ended(self, run_id: int, now: float, outcome: str) -> None:
        stmt = sa.update(RUNS).where(RUNS.c.id == run_id).values(ended_at=now, outcome=outcome[:255])
        self.catalog.write(lambda conn: conn.execute(stmt))

    def last_started(self, tasks: Iterable[str]) -> dict[str, float]:
        """task -> start of its latest run, for the tasks that ran at all."""
        stmt = (sa.select(RUNS.c.task, sa.func.max(RUNS.c.started_at))
                .where(RUNS.c.task.in_(list(tasks))).group_by(RUNS.c.task))
        with self.catalog.engine.connect() as conn:
            return {task: started for task, started in conn.execute(stmt)}

    def runs(self, task: str | None = None, since: float = 0.0) -> list[Run]:
        stmt = sa.select(RUNS.c.task, RUNS.c.node, RUNS.c.started_at, RUNS.c.ended_at, RUNS.c.outcome)
        stmt = stmt.where(RUNS.c.started_at >= since).order_by(RUNS.c.started_at, RUNS.c.id)
        if task is not None:
            stmt = stmt.where(RUNS.c.task == task)
        with self.catalog.engine.connect() as conn:
            return [Run(*row) for row in conn.execute(stmt)]

    def prune(self, before: float) -> int:
        stmt = sa.delete(RUNS).where(RUNS.c.started_at < before)
        return self.catalog.write(lambda conn: conn.execute(stmt).rowcount)
