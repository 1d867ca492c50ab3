"""The policy interface: what a cache policy is told, what it decides, and where it keeps its state.

A policy sees three events on a cached object (`hit`, `insert`, `remove`) and answers two
questions: may a missed object come in (`admit`), and which residents go to make room (`insert`
evicts them, so the space of a download is reserved the moment it is admitted, before its bytes
land). Its state lives in a `PolicyStore`: per-key records plus a few shared numbers (bytes used,
GDSF's inflation value, queue sizes). The store is memory in the simulator and the catalog in
production, so both run this same code.

Every policy orders its residents by one number per record (`priority`, lowest goes first) inside a
named queue, which is what lets a database pick victims with an indexed `ORDER BY ... LIMIT`.
Records in the queue `GHOST` are not resident: they are history (S3-FIFO's ghost queue, the
frequency of recently missed objects) and occupy no space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

GHOST = "ghost"
USED = "used"   # shared value: bytes held (or reserved) by residents


@dataclass(slots=True)
class Record:
    """What a policy remembers about one key."""

    size: int
    queue: str = "main"
    priority: float = 0.0
    freq: float = 0.0
    last: float = 0.0     # time of the last request


class PolicyStore(Protocol):
    """Where policy state lives. `lowest` must not load every record (an index or a heap)."""

    def get(self, key: str) -> Record | None: ...
    def put(self, key: str, record: Record) -> None: ...
    def remove(self, key: str) -> None: ...
    def lowest(self, queue: str, limit: int) -> list[tuple[str, Record]]: ...
    def oldest(self, queue: str) -> tuple[str, Record] | None:
        """The record of `queue` requested longest ago (smallest `last`), from an index too."""
    def value(self, name: str) -> float: ...
    def set_value(self, name: str, value: float) -> None: ...
    def rescale(self, factor: float) -> None:
        """Every record's priority becomes last + (priority - last) x factor (one pass, done rarely)."""


class Policy:
    """Base class: byte accounting and the evict-until-it-fits loop; subclasses order the residents."""

    name = "base"
    queues: tuple[str, ...] = ("main",)

    def __init__(self, store: PolicyStore, capacity: int) -> None:
        self.store = store
        self.capacity = capacity

    # ---- events ---------------------------------------------------------------------------------

    def hit(self, key: str, now: float) -> None:
        """A resident object was requested."""
        raise NotImplementedError

    def miss(self, key: str, size: int, now: float) -> None:
        """A request for an object that is not resident (history for admission); default: nothing."""

    def admit(self, key: str, size: int, now: float) -> bool:
        """May this missed object come in? Default: yes when it fits at all."""
        return 0 < size <= self.capacity

    def insert(self, key: str, size: int, now: float) -> list[str]:
        """Make `key` resident (reserving `size` bytes); returns the keys evicted to make room."""
        if self.resident(key):
            self.hit(key, now)
            return []
        victims = self.make_room(size, now)
        self._place(key, size, now)
        self.store.set_value(USED, self.used + size)
        return victims

    def remove(self, key: str) -> bool:
        """Forget a resident for a reason of its own (download failed, revalidation, purge)."""
        record = self.store.get(key)
        if record is None or record.queue == GHOST:
            return False
        self.store.remove(key)
        self.store.set_value(USED, max(0.0, self.used - record.size))
        return True

    # ---- queries -------------------------------------------------------------------------------

    @property
    def used(self) -> float:
        return self.store.value(USED)

    def resident(self, key: str) -> bool:
        record = self.store.get(key)
        return record is not None and record.queue != GHOST

    def make_room(self, size: int, now: float) -> list[str]:
        """Evict until `size` more bytes fit; returns the victims in eviction order."""
        victims: list[str] = []
        value, capacity = self.store.value, self.capacity
        while value(USED) + size > capacity:
            key = self._evict_one(now)
            if key is None:
                break
            victims.append(key)
        return victims

    def shed(self, nbytes: float, now: float) -> list[tuple[str, float]]:
        """Evict residents in the policy's order until `nbytes` are released (a quota pass that
        must free disk space); returns (key, bytes released) in eviction order."""
        victims: list[tuple[str, float]] = []
        released = 0.0
        while released < nbytes:
            before = self.used
            key = self._evict_one(now)
            if key is None:
                break
            victims.append((key, before - self.used))
            released += before - self.used
        return victims

    # ---- for subclasses ------------------------------------------------------------------------

    def _place(self, key: str, size: int, now: float) -> None:
        raise NotImplementedError

    def _evict_one(self, now: float) -> str | None:
        """Drop the policy's next victim (updating USED); None when nothing is left to drop."""
        for queue in self.queues:
            found = self.store.lowest(queue, 1)
            if found:
                key, record = found[0]
                self._drop(key, record)
                return key
        return None

    def _drop(self, key: str, record: Record) -> None:
        self.store.remove(key)
        self.store.set_value(USED, max(0.0, self.used - record.size))

    def _add(self, name: str, delta: float) -> None:
        self.store.set_value(name, max(0.0, self.store.value(name) + delta))

    def _trim_ghosts(self, total: str, limit: float) -> None:
        """Forget the lowest history records until the bytes they stand for (value `total`) fit `limit`."""
        while self.store.value(total) > limit:
            found = self.store.lowest(GHOST, 1)
            if not found:
                self.store.set_value(total, 0.0)
                return
            key, record = found[0]
            self.store.remove(key)
            self._add(total, -record.size)
