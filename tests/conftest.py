"""Shared fixtures. `catalog_url`: an empty catalog database on SQLite, PostgreSQL and MariaDB.

The server databases are created once per test session with a unique name (so concurrent pytest
runs never meet) and dropped at the end; each test gets them empty.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cachetap.wire import QUEUE_NAMES
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
        with services.rabbitmq_vhost() as url:
            yield url
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))


def _redis_db() -> Iterator[str]:
    """A Redis database no other test run holds (services.redis_database)."""
    try:
        with services.redis_database() as url:
            yield url
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))


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
