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
swaps one reference. Each slot has an expiry beside it (epoch seconds in an `array('I')`, 4 more
bytes per slot: 24 MiB for 1M keys): a key stops being redirected the second its copy turns stale,
without waiting for a reconcile. And the cache node holding it, as a small index into the capture's
table of cache servers (`array('B')`, one more byte per slot: 26 MiB for 1M keys; node 0 is the
configured cache server, used for objects whose holder is not recorded). A resize is a Python loop, so the GIL still passes to the capture thread every
switch interval instead of blocking it for a whole C-level sort as a sorted-array merge would.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Iterable, Sized

KEY_LENGTH = 32
_HEX = "0123456789abcdef"
EMPTY, DELETED = 0, 1          # slot markers; prefixes 0 and 1 are stored as 2 and 3
MAX_LOAD = 0.7                 # live + deleted slots; linear probing stays short (~6 probes for a miss)
MIN_CAPACITY = 1024
NEVER = 0xFFFFFFFF             # expiry of a key with no deadline (uint32 epoch seconds)
MAX_NODES = 256                # node indices fit one byte
ABSENT = -1                    # lookup(): not ready (or stale)


def _expiry(expires: float | None) -> int:
    if expires is None:
        return NEVER
    return max(0, min(NEVER, int(expires)))  # floor: a key is never held beyond its deadline


class BadKey(ValueError):
    """Not a cache key (32 lower-case hex characters)."""


def _node(node: int) -> int:
    if not isinstance(node, int) or not 0 <= node < MAX_NODES:
        raise ValueError(f"node index must be 0-{MAX_NODES - 1}, got {node!r}")
    return node


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
    __slots__ = ("slots", "expiry", "node", "mask", "live", "filled")

    def __init__(self, capacity: int) -> None:
        self.slots = array("Q", [EMPTY]) * capacity
        self.expiry = array("I", [0]) * capacity
        self.node = array("B", [0]) * capacity
        self.mask = capacity - 1
        self.live = 0       # stored prefixes
        self.filled = 0     # stored prefixes + DELETED markers

    def insert(self, prefix: int, expiry: int = NEVER, node: int = 0) -> bool:
        slots, mask = self.slots, self.mask
        i = prefix & mask   # the low bits of a sha256 prefix are as uniform as any hash of it
        reuse = -1
        while True:
            value = slots[i]
            if value == prefix:
                self.node[i] = node
                self.expiry[i] = expiry
                return False
            if value == EMPTY:
                break
            if value == DELETED and reuse < 0:
                reuse = i
            i = (i + 1) & mask
        if reuse >= 0:
            i = reuse
        else:
            self.filled += 1
        self.expiry[i] = expiry  # written before the prefix, so no reader sees a stale expiry or node
        self.node[i] = node
        slots[i] = prefix
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

    def contains(self, key: str, now: float | None = None) -> bool:
        """True when `key` is ready and fresh at `now` (default: the wall clock)."""
        return self.lookup(key, now) != ABSENT

    def lookup(self, key: str, now: float | None = None) -> int:
        """The index of the node holding `key` when it is ready and fresh at `now` (default: the
        wall clock), else ABSENT. Any str that is not a cache key is simply absent."""
        if len(key) != KEY_LENGTH or key.strip(_HEX):
            return ABSENT
        prefix = int(key[:16], 16)
        if prefix < 2:
            prefix += 2
        table = self._table
        slots, mask = table.slots, table.mask
        i = prefix & mask
        while True:
            value = slots[i]
            if value == prefix:
                expiry = table.expiry[i]
                if expiry == NEVER or (time.time() if now is None else now) < expiry:
                    return table.node[i]
                return ABSENT
            if value == EMPTY:
                return ABSENT
            i = (i + 1) & mask

    def expires(self, key: str) -> float | None:
        """The deadline held for `key` (None: none, or the key is absent)."""
        prefix = _prefix(key)
        table = self._table
        i = prefix & table.mask
        while True:
            value = table.slots[i]
            if value == prefix:
                expiry = table.expiry[i]
                return None if expiry == NEVER else float(expiry)
            if value == EMPTY:
                return None
            i = (i + 1) & table.mask

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.contains(key)

    def __len__(self) -> int:
        return self._table.live

    @property
    def capacity(self) -> int:
        return self._table.mask + 1

    def table_bytes(self) -> int:
        table = self._table
        return (table.slots.itemsize + table.expiry.itemsize + table.node.itemsize) * len(table.slots)

    def add(self, key: str, expires: float | None = None, node: int = 0) -> bool:
        """Mark `key` ready on node index `node` until `expires` (epoch seconds, None: no deadline);
        False if it already was (its deadline and node are updated). Raises BadKey."""
        prefix = _prefix(key)
        node = _node(node)
        with self._lock:
            table = self._table
            if table.filled + 1 > (table.mask + 1) * MAX_LOAD:
                table = self._table = _make_room(table)
            return table.insert(prefix, _expiry(expires), node)

    def remove(self, key: str) -> bool:
        """Unmark `key`; False if it was not ready. Raises BadKey."""
        prefix = _prefix(key)
        with self._lock:
            return self._table.delete(prefix)

    def replace_all(self, keys: Iterable[str | tuple[str, float | None] | tuple[str, float | None, int]]) -> int:
        """Swap in exactly `keys` (the reconcile with the catalog; each a key, a (key, expires) pair
        or a (key, expires, node index) triple); returns how many are held.

        Raises BadKey before anything changes if any key is malformed.
        """
        # Built aside without an intermediate list: 1M Python ints would cost ~40 MB on their own.
        table = _Table(_capacity_for(len(keys)) if isinstance(keys, Sized) else MIN_CAPACITY)
        limit = (table.mask + 1) * MAX_LOAD
        for item in keys:
            if isinstance(item, tuple):
                key, expires, node = item if len(item) == 3 else (item[0], item[1], 0)
            else:
                key, expires, node = item, None, 0
            if table.filled + 1 > limit:
                table = _make_room(table)
                limit = (table.mask + 1) * MAX_LOAD
            table.insert(_prefix(key), _expiry(expires), _node(node))
        with self._lock:
            self._table = table
        return table.live


def _make_room(old: _Table) -> _Table:
    """A copy without DELETED markers: same size when they made it full, twice the size otherwise."""
    capacity = old.mask + 1
    if old.live + 1 > capacity * MAX_LOAD / 2:
        capacity *= 2
    table = _Table(capacity)
    insert, expiry, node = table.insert, old.expiry, old.node
    for i, value in enumerate(old.slots):
        if value > DELETED:
            insert(value, expiry[i], node[i])
    return table
