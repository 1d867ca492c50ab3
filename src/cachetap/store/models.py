"""Catalog tables: one row per cache key (`entries`) and one row per request seen (`hits`).

Times are epoch seconds stored as DOUBLE (`sa.Double`: MySQL would make a 4-byte FLOAT of `Float`).
Tables are created only by the Alembic migrations in `store/migrations`; a test checks that these
models and the migrations agree on every supported database.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# MySQL/MariaDB: utf8mb4 so any unicode round-trips; binary collation so comparisons are exact
# (the general_ci default would make "A" == "a" and ignore trailing spaces).
MYSQL_TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

# A 64-bit autoincrement key that SQLite also accepts (only INTEGER PRIMARY KEY autoincrements there).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Entry(Base):
    __tablename__ = "entries"
    __table_args__ = (sa.UniqueConstraint("key", name="uq_entries_key"), sa.Index("ix_entries_state", "state"),
                      MYSQL_TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(32))
    url: Mapped[str] = mapped_column(sa.Text)
    host: Mapped[str] = mapped_column(sa.String(255))
    filename: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16))  # a core.lifecycle.EntryState
    reason: Mapped[str | None] = mapped_column(sa.Text)
    hits: Mapped[int] = mapped_column(sa.Integer, default=0, server_default=sa.text("0"))
    first_seen: Mapped[float] = mapped_column(sa.Double)
    last_hit: Mapped[float] = mapped_column(sa.Double)
    # from the HEAD probe
    size: Mapped[int | None] = mapped_column(sa.BigInteger)
    content_type: Mapped[str | None] = mapped_column(sa.String(255))
    etag: Mapped[str | None] = mapped_column(sa.String(255))
    last_modified: Mapped[str | None] = mapped_column(sa.String(64))
    cache_control: Mapped[str | None] = mapped_column(sa.String(255))
    expires_at: Mapped[float | None] = mapped_column(sa.Double)
    # a revalidation confirmed the stored object at this time; the first answer after it takes it
    # (Catalog.take_refresh) and is logged TCP_REFRESH_HIT
    refreshed_at: Mapped[float | None] = mapped_column(sa.Double)
    # the worker currently probing or downloading (see Catalog.claim)
    claim_token: Mapped[str | None] = mapped_column(sa.String(36))
    claimed_at: Mapped[float | None] = mapped_column(sa.Double)
    claimed_by: Mapped[str | None] = mapped_column(sa.String(64))  # "<hostname>:<pid>" of the holder
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default=sa.text("0"))
    # the stored content
    blob: Mapped[str | None] = mapped_column(sa.String(64))  # BLAKE3 content digest, 64 hex chars
    node: Mapped[str | None] = mapped_column(sa.String(64))  # the cache node holding the blob (nodes.name)
    disk: Mapped[str | None] = mapped_column(sa.String(255))  # which of that node's cache_dirs (store/disks.py)
    stored_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    published_at: Mapped[float | None] = mapped_column(sa.Double)
    # download progress
    bytes_done: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    speed: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    task_id: Mapped[str | None] = mapped_column(sa.String(64))
    # what the object saved and cost: body bytes the cache server sent for it, origin bytes its
    # downloads took, and bytes clients fetched from the origin while it was not ready (requests seen
    # times the probed size)
    served_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    fetched_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    missed_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    created_at: Mapped[float] = mapped_column(sa.Double)
    updated_at: Mapped[float] = mapped_column(sa.Double)


class Hit(Base):
    __tablename__ = "hits"
    __table_args__ = (sa.Index("ix_hits_key_ts", "key", "ts"), MYSQL_TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(32))
    ts: Mapped[float] = mapped_column(sa.Double)
    client: Mapped[str] = mapped_column(sa.String(45))


class Secret(Base):
    """Server secrets every node of a cluster must share (e.g. the key signing origin hints)."""

    __tablename__ = "secrets"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[float] = mapped_column(sa.Double)


class Stat(Base):
    """One time bucket of the console's charts: `period` 60 (kept two days) or 3600 (kept for ever),
    `bucket` its start. Counters are added to as things happen; gauges are sampled by beat."""

    __tablename__ = "stats"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    period: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    bucket: Mapped[float] = mapped_column(sa.Double, primary_key=True)
    requests: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    served_requests: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    served_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    fetched_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    missed_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    objects: Mapped[int | None] = mapped_column(sa.BigInteger)
    stored_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    disk_free: Mapped[int | None] = mapped_column(sa.BigInteger)


class PolicyRecord(Base):
    """Cache policy state per key (core.policy.base.Record): its queue and its place in it."""

    __tablename__ = "policy_records"
    __table_args__ = (sa.Index("ix_policy_records_queue_priority", "queue", "priority"),
                      sa.Index("ix_policy_records_queue_last", "queue", "last"), MYSQL_TABLE_OPTIONS)

    key: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    queue: Mapped[str] = mapped_column(sa.String(16))
    priority: Mapped[float] = mapped_column(sa.Double)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    freq: Mapped[float] = mapped_column(sa.Double)
    last: Mapped[float] = mapped_column(sa.Double)


class PolicyValue(Base):
    """Cache policy state shared by every worker: bytes used, GDSF's inflation, queue sizes."""

    __tablename__ = "policy_values"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[float] = mapped_column(sa.Double)


class Node(Base):
    """One row per process role of a cluster node (capture, cache, worker, beat), written by its
    heartbeat: a node is its rows under one name. Rows per role, so that processes of one machine
    never overwrite each other's report."""

    __tablename__ = "nodes"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    public_url: Mapped[str | None] = mapped_column(sa.String(255))  # where clients reach its cache server
    disks: Mapped[str] = mapped_column(sa.Text)  # JSON: [{"path", "total", "free"}]
    version: Mapped[str] = mapped_column(sa.String(32))
    pid: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[float] = mapped_column(sa.Double)
    last_seen: Mapped[float] = mapped_column(sa.Double)
    report: Mapped[str] = mapped_column(sa.Text)  # JSON object: the figures this process reports


class Lease(Base):
    """A named lease one process holds at a time (the active beat; one run of a housekeeping task).

    A row rather than a PostgreSQL advisory lock so that SQLite, PostgreSQL and MySQL behave alike,
    and a holder that dies without a word is known by its `expires_at` passing."""

    __tablename__ = "leases"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(128))
    acquired_at: Mapped[float] = mapped_column(sa.Double)
    renewed_at: Mapped[float] = mapped_column(sa.Double)
    expires_at: Mapped[float] = mapped_column(sa.Double)


class TaskRun(Base):
    """One run of a scheduled task (which node, when it started and ended, how it went)."""

    __tablename__ = "task_runs"
    __table_args__ = (sa.Index("ix_task_runs_task_started", "task", "started_at"), MYSQL_TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(sa.String(64))
    node: Mapped[str] = mapped_column(sa.String(128))
    started_at: Mapped[float] = mapped_column(sa.Double)
    ended_at: Mapped[float | None] = mapped_column(sa.Double)
    outcome: Mapped[str | None] = mapped_column(sa.String(255))
