"""S3-FIFO (Yang et al., SOSP 2023), counted in bytes: a small FIFO, a main FIFO and a ghost FIFO.

New objects enter `small` (10% of the bytes). An object leaving `small` that was requested again
there moves to `main`, otherwise only its key is kept in the ghost queue; a missed object found in
the ghost queue goes straight to `main`. `main` is a FIFO with reinsertion: an object at its head
with a non-zero counter (capped at 3) is moved to the tail with the counter decremented. The ghost
queue remembers as many bytes as the cache holds. Positions are a shared sequence number.
"""

from __future__ import annotations

from cachetap.core.policy.base import GHOST, USED, Policy, Record

SMALL, MAIN = "small", "main"
SEQ, SMALL_BYTES, GHOST_BYTES = "s3fifo_seq", "s3fifo_small_bytes", "s3fifo_ghost_bytes"
SMALL_SHARE = 0.10
MAX_FREQ = 3


class S3FIFO(Policy):
    name = "s3fifo"
    queues = (SMALL, MAIN)

    def hit(self, key: str, now: float) -> None:
        record = self.store.get(key)
        if record is not None and record.queue != GHOST:
            record.freq = min(MAX_FREQ, record.freq + 1)
            record.last = now
            self.store.put(key, record)   # FIFO: the position does not change

    def remove(self, key: str) -> bool:
        record = self.store.get(key)
        if record is not None and record.queue == SMALL:
            self._add(SMALL_BYTES, -record.size)
        return super().remove(key)

    def _next(self) -> float:
        seq = self.store.value(SEQ) + 1
        self.store.set_value(SEQ, seq)
        return seq

    def _place(self, key: str, size: int, now: float) -> None:
        old = self.store.get(key)
        queue = SMALL
        if old is not None and old.queue == GHOST:
            self._add(GHOST_BYTES, -old.size)
            queue = MAIN
        if queue == SMALL:
            self._add(SMALL_BYTES, size)
        self.store.put(key, Record(size=size, queue=queue, priority=self._next(), freq=0, last=now))

    def _evict_one(self, now: float) -> str | None:
        while True:
            small_bytes = self.store.value(SMALL_BYTES)
            main = self.store.lowest(MAIN, 1)
            if small_bytes > SMALL_SHARE * self.capacity or not main:
                found = self.store.lowest(SMALL, 1)
                if not found:
                    if not main:
                        return None
                    found = main
            else:
                found = main
            key, record = found[0]
            if record.queue == SMALL:
                self._add(SMALL_BYTES, -record.size)
                if record.freq >= 1:
                    record.queue, record.freq, record.priority = MAIN, 0, self._next()
                    self.store.put(key, record)
                    continue
                self.store.put(key, Record(size=record.size, queue=GHOST, priority=self._next(), last=record.last))
                self._add(USED, -record.size)
                self._add(GHOST_BYTES, record.size)
                self._trim_ghosts(GHOST_BYTES, self.capacity)
                return key
            if record.freq > 0:
                record.freq -= 1
                record.priority = self._next()
                self.store.put(key, record)
                continue
            self._drop(key, record)
            return key
