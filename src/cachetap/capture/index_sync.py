"""Keep the capture's HotIndex equal to the catalog's ready, fresh keys.

Two paths: broadcast events (`cachetap.wire` names them; tasks/index_events.py publishes them) applied as they arrive, so a key becomes
redirectable, or stops being so, within a fraction of a second on every capture node; and a full
reconcile with the catalog at start, every `reconcile_every` seconds, and at once whenever the event
connection comes back after a loss. Redis delivers fanout by publish/subscribe, which keeps nothing
for a subscriber that is away (RabbitMQ keeps this node's queue only while it is connected, too): an
event sent while the connection was down is gone. So the index is never staler than the connection
outage plus one reconcile, and even an event lost without the connection noticing (a broker restart
between two polls) is corrected within `reconcile_every`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from celery import Celery

from cachetap.capture.hotindex import BadKey, HotIndex
from cachetap.wire import INDEX_READY, decode_index_event, follow_index_events, index_queue

log = logging.getLogger(__name__)


def _local_only(_name: str | None) -> int:
    return 0  # without a table of cache nodes every key is served by the configured cache server


class IndexSync:
    def __init__(self, app: Celery, index: HotIndex, node: str, reconcile_every: float = 60.0,
                 node_index: Callable[[str | None], int] = _local_only) -> None:
        self.app = app
        self.index = index
        # The hot index's number for a holder node (capture/targets.py); -1: not redirectable.
        self.node_index = node_index
        self.reconcile_every = reconcile_every
        # One queue per capture node, stable across restarts: with the embedded broker a queue of a
        # dead process would otherwise collect every event for ever. Purged at start (a reconcile follows).
        self.queue = index_queue(f"cachetap.index.{socket.gethostname()}.{node}")
        self.events = 0
        self.reconciles = 0
        self.ready = threading.Event()  # set after the first full load
        self._lock = threading.Lock()
        self._during_reconcile: list[dict] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # reconcile now (stop, or the event connection came back)
        self._threads = [threading.Thread(target=self._consume, name="cachetap-index-events", daemon=True),
                         threading.Thread(target=self._reconcile_loop, name="cachetap-index-reconcile", daemon=True)]

    def start(self) -> IndexSync:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)

    # --- events ---------------------------------------------------------------------------------
    def apply(self, body: dict) -> None:
        event = decode_index_event(body)
        if event is None:
            log.warning("ignoring malformed index event %r", body)
            return
        op, keys, expires, node = event
        with self._lock:
            if self._during_reconcile is not None:
                self._during_reconcile.append(body)  # re-applied over the reconciled table
        held_by = self.node_index(node) if op == INDEX_READY else -1
        for key, until in zip(keys, expires):
            try:
                if held_by >= 0:
                    self.index.add(key, until, held_by)
                else:
                    self.index.remove(key)
            except (BadKey, TypeError):
                log.warning("ignoring bad key in index event: %r", key)
        self.events += 1

    def _consume(self) -> None:
        lost = False

        def connected() -> None:
            nonlocal lost
            if lost:  # back after a loss: what was sent meanwhile is gone
                log.warning("index events: connected again; reconciling with the catalog now")
                self._wake.set()
            lost = False

        def dropped() -> None:  # the reconcile keeps the index right meanwhile
            nonlocal lost
            lost = True

        follow_index_events(self.app, self.queue, self.apply, self._stop, on_connected=connected, on_lost=dropped)

    # --- reconcile ------------------------------------------------------------------------------
    def reconcile(self) -> int:
        with self._lock:
            self._during_reconcile = []
        try:
            count = self.index.replace_all(self._indexed(self.app.catalog.ready_keys(time.time())))
        finally:
            with self._lock:
                missed, self._during_reconcile = self._during_reconcile, None
        for body in missed:  # events newer than the catalog read must win over it
            self.apply(body)
        self.reconciles += 1
        self.ready.set()
        return count

    def _indexed(self, rows: Iterable[tuple[str, float | None, str | None]]) -> Iterator[tuple[str, float | None, int]]:
        for key, expires, node in rows:
            held_by = self.node_index(node)
            if held_by >= 0:
                yield key, expires, held_by

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            try:
                count = self.reconcile()
                log.debug("index reconciled: %d ready keys", count)
                wait = self.reconcile_every
            except Exception as exc:  # catalog unreachable: keep the index we have, try again soon
                log.warning("index reconcile failed: %s", exc)
                wait = min(5.0, self.reconcile_every)
            self._wake.wait(wait)
            self._wake.clear()
