"""The cache policy over the catalog, as the workers use it: requests seen, space reserved, keys gone.

The policy (`settings.eviction_policy`, `core.policy`) runs over `CatalogPolicyStore`, so every
worker shares its state and each decision runs in one locked transaction. Its capacity is
`disk_quota` (0: no quota, so the policy never evicts; `min_free_bytes` is still kept by the quota pass).
Space is reserved when a download is admitted, since its bytes land while it runs: the victims that
make room are evicted then, not at the next housekeeping pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import sqlalchemy as sa

from cachetap.core.lifecycle import EntryState
from cachetap.core.policy import Policy, make_policy
from cachetap.settings import Settings
from cachetap.store.catalog import ENTRIES, Catalog
from cachetap.store.evict import evict
from cachetap.store.policy_store import CatalogPolicyStore

if TYPE_CHECKING:
    from cachetap.tasks.app import CachetapCelery

log = logging.getLogger(__name__)
NO_QUOTA = float(1 << 62)
_POLICIES: dict[tuple[int, int, float], Policy] = {}


def policy_for(app: CachetapCelery) -> Policy:
    """One policy per app and process (a policy may keep in-memory helpers, e.g. lrfu's miniatures)."""
    capacity = app.settings.disk_quota or NO_QUOTA
    slot = (id(app), os.getpid(), capacity)  # a reloaded disk_quota makes a new policy
    policy = _POLICIES.get(slot)
    if policy is None:
        policy = _POLICIES[slot] = make_policy(app.settings.eviction_policy, CatalogPolicyStore(app.catalog.engine),
                                               int(capacity))
    return policy


def note_requests(app: CachetapCelery, keys: list[str], now: float) -> None:
    """Tell the policy about requests counted by analyze: hits on stored keys, history for the rest."""
    policy = policy_for(app)
    with policy.store.transaction():
        for key in keys:
            if policy.resident(key):
                policy.hit(key, now)
            else:
                policy.miss(key, 0, now)


def reserve(app: CachetapCelery, key: str, size: int, now: float, forced: bool = False) -> bool:
    """Reserve `size` bytes for `key`'s download, evicting what the policy picks; False if it refuses
    (never when `forced`: an operator's prefetch)."""
    policy = policy_for(app)
    with policy.store.transaction():
        if not forced and not policy.admit(key, size, now):
            return False
        victims = policy.insert(key, size, now)
    if victims:
        from cachetap.tasks.index_events import IndexNotifier

        blobs, index = app.disks, IndexNotifier(app)
        gone = sum(evict(app.catalog, blobs, v, "quota", expect_state=EntryState.READY, on_removed=index.removed,
                         node=app.settings.effective_node_name, held_elsewhere=index.held_elsewhere)
                   for v in victims)
        log.info("space for %s (%d bytes): %d of %d victims evicted (the rest were not stored yet)",
                 key, size, gone, len(victims))
    return True


def forget(app: CachetapCelery, key: str) -> None:
    """Release what `key` holds in the policy (a download that failed for good)."""
    policy = policy_for(app)
    with policy.store.transaction():
        policy.remove(key)


def quota_order(catalog: Catalog, settings: Settings, nbytes: float, now: float,
                disk: tuple[str, str | None, str | None] | None = None) -> Iterator[str]:
    """Keys to evict for `nbytes` of disk: the policy's victims in its order (an indexed ORDER BY,
    one locked transaction per batch), then ready entries it does not track (stored after their
    reservation was given up), least recently requested first. Keyset pages: no pass loads every row.
    With `disk` (label, default disk, node), only the ready objects on that disk of that node: the
    same policy, the same order, restricted to what evicting can free there."""
    only = None
    if disk is not None:
        only = sa.and_(ENTRIES.c.state == EntryState.READY.value, Catalog.held_on(*disk))
    store = CatalogPolicyStore(catalog.engine, only)
    policy = make_policy(settings.eviction_policy, store, int(settings.disk_quota or NO_QUOTA))
    left = nbytes
    while left > 0:
        with store.transaction():
            batch = policy.shed(min(left, max(1.0, policy.used / 64)), now)
        if not batch:
            break
        for key, released in batch:
            left -= released
            yield key
    after = None
    while left > 0:
        rows = store.untracked_ready(256, after)
        if not rows:
            return
        for last_hit, key, size in rows:
            left -= size
            after = (last_hit, key)
            yield key
            if left <= 0:
                return


def forgetting(catalog: Catalog, settings: Settings, then: Callable[[str], None]) -> Callable[[str], None]:
    """An `on_removed` hook for housekeeping: release the key's space in the policy, then call `then`."""
    policy = make_policy(settings.eviction_policy, CatalogPolicyStore(catalog.engine),
                         int(settings.disk_quota or NO_QUOTA))

    def removed(key: str) -> None:
        with policy.store.transaction():
            policy.remove(key)
        then(key)

    return removed
