"""Hands sightings from the capture loop to the broker in batches, without ever blocking the loop.

`add()` appends to a bounded deque (O(1), no lock held across I/O); a background thread sends a
batch when `size` sightings are waiting or the oldest has waited `interval` seconds. When the broker
is unreachable the thread logs the reason, backs off exponentially and keeps the batch; if the
buffer fills meanwhile, the oldest waiting sightings are dropped and counted (recent demand matters
more; the one batch being retried is kept whole so that a success never re-sends or loses part of it).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetap.capture.prometheus import sender_report
from cachetap.settings import Settings
from cachetap.wire import ANALYZE_BATCH, TaskSender, send

log = logging.getLogger(__name__)

Send = Callable[[list[dict]], None]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
REPORT_EVERY = 1.0


@dataclass
class BatchCounters:
    sent_batches: int = 0
    sent_items: int = 0
    dropped: int = 0
    send_errors: int = 0


def _approximate_size(sighting: dict[str, Any]) -> int:
    """Bytes a sighting holds, near enough: its strings plus a fixed share for the rest."""
    return 128 + sum(len(v) for v in sighting.values() if isinstance(v, str))


class BatchSender:
    """A thread that calls `send(batch)` with lists of at most `size` sighting dicts."""

    def __init__(self, send: Send, size: int, interval: float, buffer: int,
                 backoff_first: float = BACKOFF_FIRST, backoff_max: float = BACKOFF_MAX,
                 buffer_bytes: int = 64 << 20, report: Callable[[BatchCounters], None] | None = None):
        if size < 1 or interval <= 0 or buffer < size:
            raise ValueError(f"need size >= 1, interval > 0, buffer >= size (got {size}, {interval}, {buffer})")
        self._send = send
        self._size = size
        self._interval = interval
        self._buffer = buffer
        # The count alone allows buffer x the longest URL a client may send (a 64 KiB head each).
        self._buffer_bytes = buffer_bytes
        self._queued_bytes = 0
        self._backoff_first = backoff_first
        self._backoff_max = backoff_max
        # (enqueue time, sighting, its approximate size); appends and pops are atomic under the GIL.
        self._queue: deque[tuple[float, dict, int]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._in_flight = 0
        self.counters = BatchCounters()
        self._report = report  # told the counters from the sender thread, about once a second
        self._reported_at = 0.0
        self._thread = threading.Thread(target=self._run, name="cachetap-batcher", daemon=True)
        self._thread.start()

    # --- capture side -----------------------------------------------------------------------------
    def add(self, sighting: dict[str, Any]) -> None:
        """Queue one sighting; never blocks on the broker. Drops the oldest one when full."""
        nbytes = _approximate_size(sighting)
        with self._lock:
            while (len(self._queue) + self._in_flight >= self._buffer
                   or self._queued_bytes + nbytes > self._buffer_bytes):
                if self._queue:
                    self._queued_bytes -= self._queue.popleft()[2]
                    self.counters.dropped += 1
                else:  # the whole buffer is one batch being retried: drop the newcomer instead
                    self.counters.dropped += 1
                    return
            self._queue.append((time.monotonic(), sighting, nbytes))
            self._queued_bytes += nbytes
            if len(self._queue) >= self._size:
                self._wake.set()

    @property
    def pending(self) -> int:
        """Sightings waiting, including a batch being (re)tried."""
        with self._lock:
            return len(self._queue) + self._in_flight

    def close(self, timeout: float = 10.0) -> bool:
        """Flush what is waiting (trying for at most `timeout` seconds) and stop the thread.

        Returns True when everything was sent; what could not be sent is counted as dropped.
        """
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            # A batch still inside send() is the thread's to count (sent, or dropped if that fails).
            left = len(self._queue)
            self.counters.dropped += left
            self._queue.clear()
            self._queued_bytes = 0
            left += self._in_flight
        if left:
            log.warning("batch sender closed with %d sightings unsent (dropped)", left)
        self._report_counters(force=True)
        return left == 0 and not self._thread.is_alive()

    # --- sender thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._send_batches()
        finally:
            self._report_counters(force=True)

    def _report_counters(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._report is None or (not force and now - self._reported_at < REPORT_EVERY):
            return
        self._reported_at = now
        try:
            self._report(self.counters)
        except Exception:  # figures must not stop the sightings
            log.exception("reporting the batch sender's counters failed")

    def _send_batches(self) -> None:
        while True:
            self._report_counters()
            wait = min(self._time_until_due(), REPORT_EVERY) if self._report else self._time_until_due()
            if wait > 0 and not self._closing.is_set():
                self._wake.wait(wait)
                self._wake.clear()
                continue
            batch = self._take_batch()
            if not batch:
                if self._closing.is_set():
                    return
                continue
            if not self._deliver(batch):  # closing while the broker is down: give the batch up
                with self._lock:
                    self.counters.dropped += self._in_flight
                    self._in_flight = 0
                return

    def _time_until_due(self) -> float:
        with self._lock:
            if len(self._queue) >= self._size:
                return 0.0
            if not self._queue:
                return self._interval  # nothing waits: sleep until woken or a while passes
            return self._queue[0][0] + self._interval - time.monotonic()

    def _take_batch(self) -> list[dict]:
        with self._lock:
            n = min(self._size, len(self._queue))
            taken = [self._queue.popleft() for _ in range(n)]
            self._queued_bytes -= sum(item[2] for item in taken)
            batch = [item[1] for item in taken]
            self._in_flight = n
            return batch

    def _deliver(self, batch: list[dict]) -> bool:
        """Send one batch, retrying with backoff. False when closing cut the retries short."""
        delay = self._backoff_first
        while True:
            try:
                self._send(batch)
            except Exception as exc:  # the broker's errors are many and varied; the reason is logged
                with self._lock:
                    self.counters.send_errors += 1
                log.warning("sending %d sightings failed (%s: %s); retrying in %.1fs",
                            len(batch), type(exc).__name__, exc, delay)
                if self._closing.wait(delay * random.uniform(0.8, 1.2)):
                    return False
                delay = min(delay * 2, self._backoff_max)
                continue
            with self._lock:
                self._in_flight = 0
                self.counters.sent_batches += 1
                self.counters.sent_items += len(batch)
            return True


def make_analyze_sender(app: TaskSender) -> Send:
    """The `send` callable that puts one batch on the analyze queue of a cachetap Celery app."""

    def send_batch(batch: list[dict]) -> None:
        send(app, ANALYZE_BATCH, batch)

    return send_batch


def analyze_batch_sender(app: TaskSender, settings: Settings) -> BatchSender:
    """A BatchSender to `app`'s analyze queue, sized by `settings` (live capture, replay, replay task)."""
    return BatchSender(make_analyze_sender(app), size=settings.batch_size, interval=settings.batch_interval,
                       buffer=settings.batch_buffer, buffer_bytes=settings.batch_buffer_bytes, report=sender_report())
