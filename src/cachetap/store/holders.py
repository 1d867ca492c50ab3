"""Which cache node holds each stored object (`entries.node`), and moving an object to its owner.

A ready object stays where it was downloaded until one of its requests finds that another node owns
its key now (tasks/rehome.py): when its holder is gone, the entry goes back to `queued` for the
owner to download again (`rehome`); when its holder is alive (a node joined and took this key's
share), the owner copies it from the holder's cache server while the holder keeps serving it
(`begin_move` ... `finish_move`, under a claim in the same columns a revalidation uses: one
conditional request or copy per key at a time). Each write is one conditional UPDATE: exactly one
worker wins, and a row that changed meanwhile (evicted, re-published, moved) is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import sqlalchemy as sa

from cachetap.core.lifecycle import EntryState, Event, advance
from cachetap.store.catalog import ENTRIES, Catalog, EntryView, _check_key

READY = EntryState.READY.value


def held_ready_among(catalog: Catalog, keys: Collection[str]) -> list[EntryView]:
    """The ready entries among `keys` whose holder is recorded."""
    keys = [_check_key(k) for k in keys]
    if not keys:
        return []
    return catalog._select(sa.select(ENTRIES).where(ENTRIES.c.key.in_(keys), ENTRIES.c.state == READY,
                                                    ENTRIES.c.node.is_not(None)))


def rehome(catalog: Catalog, key: str, holder: str, token: str, now: float) -> bool:
    """Send a ready entry held by the gone node `holder` back to `queued` under a new claim (the
    caller then queues its download for the owner); True for the one winner."""
    stmt = (sa.update(ENTRIES)
            .where(ENTRIES.c.key == _check_key(key), ENTRIES.c.state == READY, ENTRIES.c.node == holder)
            .values(state=advance(EntryState.READY, Event.REHOME).value, claim_token=token, claimed_at=now,
                    claimed_by=None, reason=f"re-homed: node {holder} is gone"[:500], updated_at=now))
    return catalog._write(lambda conn: conn.execute(stmt).rowcount == 1)


def begin_move(catalog: Catalog, key: str, holder: str, token: str, now: float, lease: float) -> bool:
    """Take the claim to copy a ready entry held by the live node `holder` to its owner."""
    stmt = (sa.update(ENTRIES)
            .where(ENTRIES.c.key == _check_key(key), ENTRIES.c.state == READY, ENTRIES.c.node == holder,
                   sa.or_(ENTRIES.c.claim_token.is_(None), ENTRIES.c.claimed_at.is_(None),
                          ENTRIES.c.claimed_at < now - lease))
            .values(claim_token=token, claimed_at=now))
    return catalog._write(lambda conn: conn.execute(stmt).rowcount == 1)


def finish_move(catalog: Catalog, key: str, token: str, blob: str, node: str, disk: str | None = None) -> bool:
    """Name `node` (and its `disk`) the holder of a moved entry, only while the claim is ours and the
    content the same."""
    stmt = (sa.update(ENTRIES)
            .where(ENTRIES.c.key == _check_key(key), ENTRIES.c.state == READY, ENTRIES.c.claim_token == token,
                   ENTRIES.c.blob == blob)
            .values(node=node, disk=disk, claim_token=None, claimed_at=None, reason=None, updated_at=time.time()))
    return catalog._write(lambda conn: conn.execute(stmt).rowcount == 1)
