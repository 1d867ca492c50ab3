"""The set of ready cache keys, held by the capture process for the redirect fast path.

Hot path, hand-written on purpose: a Python `set[str]` of one million 32-character keys costs ~130 MB
(81-byte str objects plus the set's slots); here every key is one 64-bit slot of an open-addressing
table in an `array('Q')`: 16 MiB for 1M keys (2**21 slots, load 0.48), 32 MiB after it grows.

Why 64 bits of a 128-bit key are enough: keys are sha256 prefixes, so their first 64 bits are uniform.
A lookup of a key that is not ready matches one of n stored prefixes with probability n / 2**64
(5.4e-14 for n = 1M: at 10,000 lookups a second, one false match in ~60,000 years); that false match
is caught downstream anyway, because the Location carries the full key and the cache server only
serves a complete, verified object by its full key. Two ready keys sharing a prefix (birthday bound
n**2 / 2**65 = 2.7e-8 for 1M keys) only means removing one hides the other: a missed redirect, which
fails open.

Threads: any number of writers (serialised by a lock) and lock-free readers. A reader takes the
current table once per lookup; writers change one slot at a time (atomic under the GIL) and never
fill a table beyond 70 %, so every probe ends at an empty slot; a resize builds a new table aside and
swaps one reference. A resize is a Python loop, so the GIL still passes to the capture thread every
switch interval instead of blocking it for a whole C-level sort as a sorted-array merge would.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterable, Sized

KEY_LENGTH = 32
_HEX = "0123456789abcdef"
EMPTY, DELETED = 0, 1          # slot markers; prefixes 0 and 1 are stored as 2 and 3
MAX_LOAD = 0.7                 # live + deleted slots; linear probing stays short (~6 probes for a miss)
MIN_CAPACITY = 1024


class BadKey(ValueError):
    """Not a cache key (32 lower-case hex characters)."""


def _prefix(key: str) -> int:
    if not isinstance(key, str) or len(key) != KEY_LENGTH or key.strip(_HEX):
        raise BadKey(f"not a cache key (32 lower-case hex characters): {key!r}")
    value = int(key[:16], 16)
    return value + 2 if value < 2 else value


def _capacity_for(count: int) -> int:
    capacity = MIN_CAPACITY
    while count > capacity // 2:  # built at <= 50 % load, so adds have room before it grows
        capacity *= 2
    return capacity


class _Table:
    __slots__ = ("slots", "mask", "live", "filled")

    def __init__(self, capacity: int) -> None:
        self.slots = array("Q", [EMPTY]) * capacity
        self.mask = capacity - 1
        self.live = 0       # stored prefixes
        self.filled = 0     # stored prefixes + DELETED markers

    def insert(self, prefix: int) -> bool:
        slots, mask = self.slots, self.mask
        i = prefix & mask   # the low bits of a sha256 prefix are as uniform as any hash of it
        reuse = -1
        while True:
            value = slots[i]
            if value == prefix:
                return False
            if value == EMPTY:
                break
            if value == DELETED and reuse < 0:
                reuse = i
            i = (i + 1) & mask
        if reuse >= 0:
            slots[reuse] = prefix
        else:
            slots[i] = prefix
            self.filled += 1
        self.live += 1
        return True

    def delete(self, prefix: int) -> bool:
        slots, mask = self.slots, self.mask
        i = prefix & mask
        while True:
            value = slots[i]
            if value == prefix:
                slots[i] = DELETED
                self.live -= 1
                return True
            if value == EMPTY:
                return False
            i = (i + 1) & mask


class HotIndex:
    """Ready cache keys; `contains` is the capture thread's lookup, the rest are writer calls."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._table = _Table(MIN_CAPACITY)
        self.replace_all(keys)

    def contains(self, key: str) -> bool:
        """True when `key` is ready. Any str that is not a cache key is simply absent."""
        if len(key) != KEY_LENGTH or key.strip(_HEX):
            return False
        prefix = int(key[:16], 16)
        if prefix < 2:
            prefix += 2
        table = self._table
        slots, mask = table.slots, table.mask
        i = prefix & mask
        while True:
            value = slots[i]
            if value == prefix:
                return True
            if value == EMPTY:
                return False
            i = (i + 1) & mask

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.contains(key)

    def __len__(self) -> int:
        return self._table.live

    @property
    def capacity(self) -> int:
        return self._table.mask + 1

    def table_bytes(self) -> int:
        table = self._table
        return table.slots.itemsize * len(table.slots)

    def add(self, key: str) -> bool:
        """Mark `key` ready; False if it already was. Raises BadKey."""
        prefix = _prefix(key)
        with self._lock:
            table = self._table
            if table.filled + 1 > (table.mask + 1) * MAX_LOAD:
                table = self._table = _make_room(table)
            return table.insert(prefix)

    def remove(self, key: str) -> bool:
        """Unmark `key`; False if it was not ready. Raises BadKey."""
        prefix = _prefix(key)
        with self._lock:
            return self._table.delete(prefix)

    def replace_all(self, keys: Iterable[str]) -> int:
        """Swap in exactly `keys` (the reconcile with the catalog); returns how many are held.

        Raises BadKey before anything changes if any key is malformed.
        """
        # Built aside without an intermediate list: 1M Python ints would cost ~40 MB on their own.
        table = _Table(_capacity_for(len(keys)) if isinstance(keys, Sized) else MIN_CAPACITY)
        limit = (table.mask + 1) * MAX_LOAD
        for key in keys:
            if table.filled + 1 > limit:
                table = _make_room(table)
                limit = (table.mask + 1) * MAX_LOAD
            table.insert(_prefix(key))
        with self._lock:
            self._table = table
        return table.live


def _make_room(old: _Table) -> _Table:
    """A copy without DELETED markers: same size when they made it full, twice the size otherwise."""
    capacity = old.mask + 1
    if old.live + 1 > capacity * MAX_LOAD / 2:
        capacity *= 2
    table = _Table(capacity)
    insert = table.insert
    for value in old.slots:
        if value > DELETED:
            insert(value)
    return table
