"""Tell every capture node at once that keys became redirectable or stopped being so.

A fanout exchange on the Celery broker: the download task publishes "ready" when it publishes a file,
eviction, purge and revalidation publish "removed". Capture nodes each bind their own queue to it
(capture/index_sync.py). Publishing is best effort: a lost message is corrected by the capture's
periodic reconcile with the catalog, so a broker hiccup never fails the task that published.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kombu import Exchange

log = logging.getLogger(__name__)

INDEX_EXCHANGE = Exchange("cachetap.index", type="fanout", durable=False)
READY, REMOVED = "ready", "removed"


def publish_index_event(app: Any, op: str, keys: Iterable[str]) -> bool:
    """Broadcast `op` ("ready" or "removed") for `keys`; returns False (and logs) if it could not."""
    if op not in (READY, REMOVED):
        raise ValueError(f"unknown index event {op!r}")
    keys = list(keys)
    if not keys:
        return True
    try:
        with app.producer_or_acquire() as producer:
            producer.publish({"op": op, "keys": keys}, exchange=INDEX_EXCHANGE, routing_key="index",
                             serializer="json", declare=[INDEX_EXCHANGE], retry=True,
                             retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
        return True
    except Exception as exc:  # the capture's reconcile repairs what a lost event misses
        log.warning("could not broadcast index event %s for %d keys: %s", op, len(keys), exc)
        return False


class IndexNotifier:
    """What catalog changes tell capture nodes: `ready(key)` and `removed(key)` as broadcast events.

    Without an app (tools run by hand with no broker in reach) it tells nobody; the capture's periodic
    reconcile with the catalog then picks the change up.
    """

    def __init__(self, app: Any | None = None) -> None:
        self.app = app

    def ready(self, key: str) -> None:
        if self.app is not None:
            publish_index_event(self.app, READY, [key])

    def removed(self, key: str) -> None:
        if self.app is not None:
            publish_index_event(self.app, REMOVED, [key])


NO_INDEX = IndexNotifier()
