"""Tell every capture node at once that keys became redirectable or stopped being so.

A fanout exchange on the Celery broker (its names in `cachetap.wire`): the download task publishes
INDEX_READY when it publishes a file; eviction, purge and revalidation publish INDEX_REMOVED. Capture
nodes each bind their own queue to it (capture/index_sync.py). Publishing is best effort: a lost message is corrected by the capture's
periodic reconcile with the catalog, so a broker hiccup never fails the task that published.
Cache servers listen too (`IndexFollower`): each event's keys leave their row cache at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from celery import Celery
from cachetap.wire import (INDEX_EXCHANGE, INDEX_READY, INDEX_REMOVED, INDEX_ROUTING_KEY, FileDrop,
                           decode_index_event, follow_index_events, index_event, index_queue, send_download)

if TYPE_CHECKING:
    from cachetap.store.catalog import EntryView

log = logging.getLogger(__name__)


def publish_index_event(app: Celery, op: str, keys: Iterable[str],
                        expires: Iterable[float | None] | None = None, node: str | None = None) -> bool:
    """Broadcast `op` (INDEX_READY or INDEX_REMOVED) for `keys`, with each key's deadline and the node
    holding them when given; False (and a log line) if it could not."""
    keys = list(keys)
    # An unknown op or a wrong number of expiries raises here, before anything is sent.
    body = index_event(op, keys, None if expires is None else list(expires), node)
    if not keys:
        return True
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(body, exchange=INDEX_EXCHANGE, routing_key=INDEX_ROUTING_KEY,
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

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app

    def ready(self, key: str, expires: float | None = None, node: str | None = None) -> None:
        if self.app is not None:
            publish_index_event(self.app, INDEX_READY, [key], expires=[expires], node=node)

    def removed(self, key: str) -> None:
        if self.app is not None:
            publish_index_event(self.app, INDEX_REMOVED, [key])

    def held_elsewhere(self, entry: EntryView) -> None:
        """A removed row's file is on another node: ask that node to delete it (best effort: its
        reconcile deletes files no row names after reconcile_grace anyway)."""
        if self.app is None or not entry.blob or not entry.node:
            return
        try:
            send_download(self.app, FileDrop(entry.blob, entry.disk), entry.node)
        except Exception as exc:
            log.warning("could not ask node %s to delete the file of %s: %s", entry.node, entry.key, exc)


NO_INDEX = IndexNotifier()


class IndexFollower:
    """A cache server process's ear on the index fanout: every key an event names (purged, evicted,
    re-homed, ready again) goes to `forget` as it arrives, so the server's row cache (web/lookup.py,
    kept `ttl` = 1 s) stops serving a purged object at once instead of up to that TTL later, and
    serves a newly ready one without waiting out a cached "not here". An event it misses (broker
    down; Redis publish/subscribe while away) costs at most that TTL, so nothing is reconciled here.

    `queue_name` must be stable for a process slot across restarts (the embedded broker would keep
    a dead process's queue collecting events); it is purged on the first connection.
    """

    def __init__(self, app: Celery, forget: Callable[[str], None], queue_name: str) -> None:
        self.app = app
        self.forget = forget
        self.queue = index_queue(queue_name)
        self.events = 0
        self.listening = threading.Event()  # bound to the exchange (tests wait for it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cachetap-index-follower", daemon=True)

    def start(self) -> IndexFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # The row cache's TTL bounds what a dropped connection misses: nothing to reconcile.
        follow_index_events(self.app, self.queue, self._on_event, self._stop, on_connected=self.listening.set,
                            on_lost=self.listening.clear, who="index events (cache server)")

    def _on_event(self, body: dict) -> None:
        event = decode_index_event(body)
        if event is not None:
            for key in event[1]:
                self.forget(key)
            self.events += 1
