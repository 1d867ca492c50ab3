"""Engines and schema migrations for the catalog (SQLite, PostgreSQL, MySQL/MariaDB).

Tables are created only by `upgrade()`, which runs the Alembic migrations shipped in the package.
Several processes may call it at once on start-up: it serialises them with a lock (a file lock next
to a SQLite file, an advisory lock on a server) so exactly one of them migrates.
"""

from __future__ import annotations

import contextlib
import fcntl
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import StaticPool

SCRIPT_LOCATION = "cachetap.store:migrations"
SQLITE_BUSY_TIMEOUT_S = 30
MIGRATION_LOCK_NAME = "cachetap-migrate"
MIGRATION_LOCK_WAIT_S = 300

# Execution option read by the SQLite "begin" hook: writers take the write lock up front
# (BEGIN IMMEDIATE), so a transaction never has to upgrade a read lock, which SQLite refuses
# with "database is locked" without waiting.
SQLITE_IMMEDIATE = "cachetap_sqlite_immediate"


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine tuned for the catalog: WAL and a 30 s busy timeout on SQLite, pings on servers."""
    url = sa.make_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, **kwargs)
    if backend in ("mysql", "mariadb") and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})  # otherwise 4-byte unicode is mangled
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
    if _is_memory(url):
        # One shared connection, or every pool connection would see its own empty database.
        kwargs.setdefault("poolclass", StaticPool)
        connect_args.setdefault("check_same_thread", False)
    else:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # The driver's own implicit transactions are off; the "begin" hook below issues BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
            if not _is_memory(url):
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, far fewer fsyncs
        finally:
            cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine (and pool), marked so SQLite transactions start with the write lock."""
    return engine.execution_options(**{SQLITE_IMMEDIATE: True})


def is_transient(exc: BaseException) -> bool:
    """A deadlock or serialisation failure: the transaction was rolled back and may be retried."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in ("40P01", "40001"):  # psycopg
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] in (1213, 1205)  # MySQL deadlock, lock wait timeout


# ---- migrations ---------------------------------------------------------------------------------

def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    return cfg


@contextlib.contextmanager
def _engine_for(url_or_engine: str | URL | Engine) -> Iterator[Engine]:
    if isinstance(url_or_engine, Engine):
        yield url_or_engine
        return
    engine = make_engine(url_or_engine)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade(url_or_engine: str | URL | Engine, revision: str = "head") -> None:
    """Bring the catalog schema to `revision`; safe to call from several processes at once."""
    with _engine_for(url_or_engine) as engine, _migration_lock(engine) as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(url_or_engine: str | URL | Engine) -> str | None:
    """The schema revision the database is at, None for an empty database."""
    with _engine_for(url_or_engine) as engine, engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection, not in a transaction, held while no other process migrates the same database."""
    backend = engine.url.get_backend_name()
    if backend == "sqlite":
        # Lock before connecting: the first connection switches a new file to WAL.
        with _sqlite_file_lock(engine.url), engine.connect() as conn:
            yield conn
        return
    with engine.connect() as conn:
        if backend == "postgresql":
            key = zlib.crc32(MIGRATION_LOCK_NAME.encode())  # advisory locks are per database
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()  # a session lock: it outlives the transaction
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        elif backend in ("mysql", "mariadb"):
            # GET_LOCK names are server-wide: include the database name (64 characters at most).
            name = f"{MIGRATION_LOCK_NAME}:{engine.url.database}"[:64]
            got = conn.execute(sa.text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": MIGRATION_LOCK_WAIT_S}).scalar()
            conn.commit()
            if got != 1:
                raise TimeoutError(f"could not get the migration lock {name!r} within {MIGRATION_LOCK_WAIT_S}s")
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                conn.commit()
        else:
            yield conn


@contextlib.contextmanager
def _sqlite_file_lock(url: URL) -> Iterator[None]:
    if _is_memory(url):
        yield
        return
    lock_path = Path(url.database).expanduser()
    lock_path = lock_path.with_name(lock_path.name + ".migrate.lock")
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
