"""Alembic environment for the catalog.

Normally run through `cachetap.store.db.upgrade()`, which passes an open connection in
`config.attributes["connection"]`. For development commands (`alembic revision --autogenerate`)
the URL comes from the `sqlalchemy.url` option or CACHETAP_DATABASE_URL.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from cachetap.store.db import make_engine
from cachetap.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: later migrations rewrite tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("CACHETAP_DATABASE_URL")
    if not url:
        raise RuntimeError("no database: set sqlalchemy.url or CACHETAP_DATABASE_URL")
    return url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
