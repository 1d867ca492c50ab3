"""In-memory policy state and hit counting (the simulator's storage): dicts plus a heap per queue.

Hand-written because it is the simulator's hot path: a million requests go through it per policy.
The heaps keep stale entries (a key re-prioritised or removed) and skip them lazily when popped.
"""

from __future__ import annotations

import heapq
from collections import deque

from cachetap.core.policy.base import Record

NONE = (0.0, "", -1)   # no live heap item


class MemoryStore:
    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.values: dict[str, float] = {}
        self._heaps: dict[str, list[tuple[float, int, str]]] = {}
        self._live: dict[str, tuple[float, str, int]] = {}   # key -> (priority, queue, sequence) of its live heap item
        self._seq = 0

    def get(self, key: str) -> Record | None:
        return self.records.get(key)

    def put(self, key: str, record: Record) -> None:
        self.records[key] = record
        live = self._live.get(key)
        if live is not None and live[0] == record.priority and live[1] == record.queue:
            return   # same position: the live heap item still stands
        self._seq += 1
        self._live[key] = (record.priority, record.queue, self._seq)
        heap = self._heaps.get(record.queue)
        if heap is None:
            heap = self._heaps[record.queue] = []
        heapq.heappush(heap, (record.priority, self._seq, key))
        if len(heap) > 64 and len(heap) > 4 * len(self.records):
            self._compact()

    def remove(self, key: str) -> None:
        if self.records.pop(key, None) is not None:
            del self._live[key]

    def lowest(self, queue: str, limit: int) -> list[tuple[str, Record]]:
        heap = self._heaps.get(queue)
        found: list[tuple[str, Record]] = []
        if not heap:
            return found
        # Drop stale items from the top, then read the live ones without disturbing the heap.
        live = self._live
        while heap and (live.get(heap[0][2]) or NONE)[2] != heap[0][1]:
            heapq.heappop(heap)
        if limit == 1:
            return [(heap[0][2], self.records[heap[0][2]])] if heap else found
        want = limit
        while True:
            found = [(key, self.records[key]) for _p, seq, key in heapq.nsmallest(want, heap)
                     if (live.get(key) or NONE)[2] == seq]
            if len(found) >= limit or want >= len(heap):
                return found[:limit]
            want *= 4

    def value(self, name: str) -> float:
        return self.values.get(name, 0.0)

    def set_value(self, name: str, value: float) -> None:
        self.values[name] = value

    def rescale(self, factor: float) -> None:
        self._heaps = {}
        for key, record in self.records.items():
            record.priority = record.last + (record.priority - record.last) * factor
            seq = self._live[key][2]
            self._live[key] = (record.priority, record.queue, seq)
            self._heaps.setdefault(record.queue, []).append((record.priority, seq, key))
        for heap in self._heaps.values():
            heapq.heapify(heap)

    def _compact(self) -> None:
        for queue, heap in self._heaps.items():
            kept = [item for item in heap if (self._live.get(item[2]) or NONE)[2] == item[1]]
            heapq.heapify(kept)
            self._heaps[queue] = kept


class MemoryHits:
    """Requests per key within a sliding window: the simulator's stand-in for the catalog's hits table."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._times: dict[str, deque[float]] = {}

    def record(self, key: str, now: float) -> int:
        """Count a request at `now`; returns the requests for `key` within the window, this one included."""
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = deque()
        times.append(now)
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)
