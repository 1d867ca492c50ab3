"""Shared fixtures. `catalog_url`: an empty catalog database on SQLite, PostgreSQL and MariaDB.

The server databases are created once per test session with a unique name (so concurrent pytest
runs never meet) and dropped at the end; each test gets them empty.
"""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from cachetap.wire import QUEUE_NAMES
from cachetap.lifetime import pid_is_alive
from cachetap.testing import services

CATALOG_BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mariadb", marks=pytest.mark.services),
]


def _admin_engine(kind: str) -> sa.Engine:
    db = "postgres" if kind == "postgresql" else ""
    return sa.create_engine(services.URLS[kind].format(db=db), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def server_databases() -> Iterator[dict[str, str]]:
    """kind -> URL of this session's database on that server, created on first use."""
    created: dict[str, str] = {}

    class Lazy(dict):
        def __missing__(self, kind: str) -> str:
            try:
                services.ensure(kind)
            except services.ServiceUnavailable as exc:
                pytest.skip(str(exc))
            name = f"cachetap_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            engine = _admin_engine(kind)
            with engine.connect() as conn:
                extra = " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" if kind == "mariadb" else ""
                conn.exec_driver_sql(f"CREATE DATABASE {name}{extra}")
            engine.dispose()
            created[kind] = name
            self[kind] = services.URLS[kind].format(db=name)
            return self[kind]

    yield Lazy()
    for kind, name in created.items():
        engine = _admin_engine(kind)
        with engine.connect() as conn:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        engine.dispose()


def _drop_all_tables(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        meta.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=CATALOG_BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path, server_databases) -> str:
    """URL of an empty database (no tables); run `cachetap.store.db.upgrade(url)` to migrate it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    url = server_databases[request.param]
    _drop_all_tables(url)
    return url


@pytest.fixture
def postgresql_url(server_databases) -> str:
    """URL of an empty PostgreSQL database (the catalog of a cluster test)."""
    url = server_databases["postgresql"]
    _drop_all_tables(url)
    return url


@pytest.fixture
def mariadb_url(server_databases) -> str:
    """URL of an empty MariaDB database."""
    url = server_databases["mariadb"]
    _drop_all_tables(url)
    return url


@pytest.fixture
def catalog(catalog_url):
    """A `Catalog` on a freshly migrated `catalog_url` database."""
    from cachetap.store.catalog import open_catalog

    catalog = open_catalog(catalog_url)
    yield catalog
    catalog.engine.dispose()


# ---- brokers: the embedded one, an isolated Redis database, a RabbitMQ vhost of our own ----------

def _rabbitmq_vhost() -> Iterator[str]:
    """A vhost of our own, so concurrent test runs never consume each other's messages."""
    try:
        services.ensure("rabbitmq")
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))
    vhost = f"cachetap_test_{uuid.uuid4().hex[:8]}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=120)
    subprocess.run([*ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([*ctl, "delete_vhost", vhost], check=False, capture_output=True, timeout=120)


def _redis_db() -> Iterator[str]:
    """A Redis database (4-15) that no other test holds, emptied before and after.

    Emptied whole, not just the queue lists: a worker killed mid-task in an earlier test leaves its
    message in kombu's `unacked` hash, and the next worker on that database would restore it. A lock
    in database 0 (the holder's pid) keeps concurrent pytest runs on this machine apart.
    """
    try:
        services.ensure("redis")
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))
    locks = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for db in random.sample(range(4, 16), 12):
        lock = f"cachetap-test-db:{db}"
        holder = locks.get(lock)
        if holder is None:
            if not locks.set(lock, os.getpid(), ex=3600, nx=True):
                continue  # another run took it just now
        elif pid_is_alive(int(holder)):
            continue
        else:  # left by a run that died
            locks.set(lock, os.getpid(), ex=3600)
        break
    else:
        locks.close()
        pytest.skip("Redis databases 4-15 are all held by other test runs on this machine")
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        locks.delete(lock)
        locks.close()


@pytest.fixture(params=["filesystem", "redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """"" for the embedded broker, else the URL of an isolated Redis db / RabbitMQ vhost."""
    if request.param == "filesystem":
        yield ""
    elif request.param == "redis":
        yield from _redis_db()
    else:
        yield from _rabbitmq_vhost()


@pytest.fixture
def redis_broker_url() -> Iterator[str]:
    yield from _redis_db()


@pytest.fixture
def rabbitmq_broker_url() -> Iterator[str]:
    yield from _rabbitmq_vhost()
