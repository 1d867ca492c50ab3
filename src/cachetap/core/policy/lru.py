"""LRU: the least recently requested resident goes first (cachetap's original quota rule)."""

from __future__ import annotations

from cachetap.core.policy.base import Policy, Record


class LRU(Policy):
    name = "lru"

    def hit(self, key: str, now: float) -> None:
        record = self.store.get(key)
        if record is not None:
            record.freq += 1
            record.last = record.priority = now
            self.store.put(key, record)

    def _place(self, key: str, size: int, now: float) -> None:
        self.store.put(key, Record(size=size, priority=now, freq=1, last=now))
