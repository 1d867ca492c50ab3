"""LRFU behind a probation window.

Main queue: LRFU (Lee et al., IEEE ToC 2001). Every request adds 1 to an object's score and scores
halve every `half_life` seconds, so the order runs from LRU (short half-life) to LFU (long). Scores
of all objects decay alike, so the order only changes when an object is requested: the priority kept
per record is time-invariant, now + half_life x log2(score), in seconds, which a database can index.

Window (after W-TinyLFU, Einziger et al. 2017, and S3-FIFO's quick demotion): new objects enter a
probation queue of 10% of the bytes; one not requested again while there leaves as history, so scans
and one-hit wonders never push out objects that earn hits. Evicted objects keep their score as
history (up to `history` x capacity bytes), and one that comes back goes straight to the main queue.
Byte hit ratio is the goal, and a byte of an object requested r times per second earns r whatever
the object's size, so scores are not divided by size; size enters as the bytes a resident occupies.
"""

from __future__ import annotations

import math

from cachetap.core.policy.base import GHOST, Policy, PolicyStore, Record

WINDOW, MAIN = "window", "main"
GHOST_BYTES, WINDOW_BYTES, HALF_LIFE = "lrfu_ghost_bytes", "lrfu_window_bytes", "lrfu_half_life"
WINDOW_SHARE = 0.10


class LRFU(Policy):
    name = "lrfu"
    queues = (WINDOW, MAIN)

    def __init__(self, store: PolicyStore, capacity: int, half_life: float = 48 * 3600.0,
                 history: float = 4.0) -> None:
        super().__init__(store, capacity)
        self.default_half_life = half_life
        self.history = history

    @property
    def half_life(self) -> float:
        return self.store.value(HALF_LIFE) or self.default_half_life

    def _bumped(self, record: Record | None, now: float) -> float:
        """The priority after one more request at `now`."""
        if record is None:
            return now
        h = self.half_life
        return now + h * math.log2(2.0 ** min(64.0, (record.priority - now) / h) + 1.0)

    def _add(self, name: str, delta: float) -> None:
        self.store.set_value(name, max(0.0, self.store.value(name) + delta))

    def hit(self, key: str, now: float) -> None:
        record = self.store.get(key)
        if record is not None:
            if record.queue != WINDOW:   # the window is a FIFO: its position never changes
                record.priority = self._bumped(record, now)
            record.freq += 1
            record.last = now
            self.store.put(key, record)

    def miss(self, key: str, size: int, now: float) -> None:
        record = self.store.get(key)
        if record is None:
            self.store.put(key, Record(size=size, queue=GHOST, priority=now, freq=1, last=now))
            self._add(GHOST_BYTES, size)
            self._trim_history()
        elif record.queue == GHOST:
            self.hit(key, now)

    def remove(self, key: str) -> bool:
        record = self.store.get(key)
        if record is not None and record.queue == WINDOW:
            self._add(WINDOW_BYTES, -record.size)
        return super().remove(key)

    def _place(self, key: str, size: int, now: float) -> None:
        old = self.store.get(key)
        if old is not None and old.queue == GHOST:
            self._add(GHOST_BYTES, -old.size)
            if old.freq > 1:
                # Requested before this admission (or evicted earlier): its history earns it the main queue.
                self.store.put(key, Record(size=size, queue=MAIN, priority=old.priority, freq=old.freq, last=now))
                return
        self._add(WINDOW_BYTES, size)
        self.store.put(key, Record(size=size, queue=WINDOW, priority=now, freq=1, last=now))

    def _evict_one(self, now: float) -> str | None:
        while True:
            main = self.store.lowest(MAIN, 1)
            found = main
            if self.store.value(WINDOW_BYTES) > WINDOW_SHARE * self.capacity or not main:
                found = self.store.lowest(WINDOW, 1) or main
            if not found:
                return None
            key, record = found[0]
            if record.queue == WINDOW:
                self._add(WINDOW_BYTES, -record.size)
                if record.freq > 1:   # requested again while on probation
                    # Its requests all fell within the short stay in the window: hardly decayed.
                    record.queue = MAIN
                    record.priority = record.last + self.half_life * math.log2(record.freq)
                    self.store.put(key, record)
                    continue
            self._drop(key, record)
            return key

    def _drop(self, key: str, record: Record) -> None:
        super()._drop(key, record)
        self.store.put(key, Record(size=record.size, queue=GHOST, priority=record.priority, freq=record.freq,
                                   last=record.last))
        self._add(GHOST_BYTES, record.size)
        self._trim_history()

    def _trim_history(self) -> None:
        limit = self.history * self.capacity
        while self.store.value(GHOST_BYTES) > limit:
            found = self.store.lowest(GHOST, 1)
            if not found:
                self.store.set_value(GHOST_BYTES, 0.0)
                return
            key, record = found[0]
            self.store.remove(key)
            self._add(GHOST_BYTES, -record.size)
