"""Migrations are the only way tables appear; they must match the models on every database."""

from __future__ import annotations

import multiprocessing

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cachetap.store import db
from cachetap.store.models import Base

HEAD = "0010_policy_last_index"


def test_upgrade_creates_tables_matching_models(catalog_url):
    assert db.current_revision(catalog_url) is None
    db.upgrade(catalog_url)
    assert db.current_revision(catalog_url) == HEAD
    engine = db.make_engine(catalog_url)
    try:
        assert {"entries", "hits", "policy_records", "policy_values", "alembic_version"} <= set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op(catalog_url):
    db.upgrade(catalog_url)
    engine = db.make_engine(catalog_url)
    try:
        db.upgrade(engine)  # an engine works as well as a URL
        assert db.current_revision(engine) == HEAD
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_tables(catalog_url):
    from alembic import command

    db.upgrade(catalog_url)
    engine = db.make_engine(catalog_url)
    try:
        with engine.connect() as conn:
            cfg = db.alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        assert not {"entries", "hits", "policy_records", "policy_values"} & set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _upgrade_in_child(url: str, start: multiprocessing.Barrier, results: multiprocessing.Queue) -> None:
    try:
        start.wait(timeout=120)
        db.upgrade(url)
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_upgrades_from_several_processes(catalog_url):
    ctx = multiprocessing.get_context("spawn")
    n = 4
    start, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_upgrade_in_child, args=(catalog_url, start, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * n
    assert db.current_revision(catalog_url) == HEAD


def test_sqlite_parent_directory_is_created_and_wal_enabled(tmp_path):
    path = tmp_path / "deep" / "er" / "catalog.sqlite"
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        db.upgrade(engine)
        assert path.exists()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        engine.dispose()


def test_in_memory_sqlite_keeps_one_database():
    engine = db.make_engine("sqlite://")
    try:
        db.upgrade(engine)
        assert db.current_revision(engine) == HEAD
    finally:
        engine.dispose()


def test_mysql_urls_get_utf8mb4():
    engine = db.make_engine("mysql+pymysql://u@127.0.0.1:1/x")
    assert engine.url.query["charset"] == "utf8mb4"
    kept = db.make_engine("mysql+pymysql://u@127.0.0.1:1/x?charset=utf8")
    assert kept.url.query["charset"] == "utf8"


def test_unreachable_server_raises_a_clear_error():
    with pytest.raises(sa.exc.OperationalError):
        db.upgrade("postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2")
