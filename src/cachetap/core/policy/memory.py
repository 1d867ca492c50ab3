"""In-memory policy state and hit counting (the simulator's storage): dicts plus, per queue, a
sorted run and a heap.

Hand-written because it is the simulator's hot path: a million requests go through it per policy.
A queue's items are (priority, sequence, key). Most are put in ascending order (LRU's and the FIFO
windows' priority is the request time), so those are appended to a run (a deque, already sorted:
O(1) in and out); the others go to a heap. The lowest item is the smaller of the two heads, so the
order is exactly that of one heap. Both keep stale items (a key re-prioritised or removed) and skip
them lazily when they reach the head.

A request raises a record's priority in place (LRFU, LRU, GDSF), and most records are requested
several times before they come near the head, so a raise pushes nothing: the record's older item
stays as a stand-in (it sorts no later than the record's true position) and the true item is pushed
only if the stand-in reaches the head. The head is therefore always a true item, and the smallest.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from heapq import heappop, heappush
from itertools import chain

from cachetap.core.policy.base import Record

NONE = (0.0, "", -1)   # no live item

Item = tuple[float, int, str]   # priority, sequence, key


class MemoryStore:
    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.values: defaultdict[str, float] = defaultdict(float)
        self._runs: dict[str, deque[Item]] = {}
        self._heaps: dict[str, list[Item]] = {}
        self._live: dict[str, tuple[float, str, int]] = {}   # key -> (priority, queue, sequence) of its live item
        self._seq = 0
        self._items = 0   # items in all runs and heaps, stale ones included
        self._raised: set[str] = set()   # keys whose true item is not pushed (a stand-in is)
        # Per queue asked for by `oldest`: (last, key) items in a sorted run (most are put in time
        # order) and a heap for the others, stale items skipped lazily, as for the priorities.
        self._by_last: dict[str, tuple[deque[tuple[float, str]], list[tuple[float, str]]]] = {}
        # The hot calls, bound once to the dicts' own (C) methods: a policy makes tens of them per
        # request, and a Python frame each was a good part of the simulator's time.
        self.get = self.records.get
        self.value = self.values.__getitem__
        self.set_value = self.values.__setitem__

    def get(self, key: str) -> Record | None:   # (bound to records.get in __init__)
        return self.records.get(key)

    def put(self, key: str, record: Record) -> None:
        self.records[key] = record
        priority, queue = record.priority, record.queue
        if self._by_last:
            order = self._by_last.get(queue)
            if order is not None:
                run, heap = order
                if not run or run[-1][0] <= record.last:
                    run.append((record.last, key))
                else:
                    heappush(heap, (record.last, key))
                if len(run) + len(heap) > 2 * len(self.records) + 64:
                    self._by_last[queue] = self._last_order(queue)
        live = self._live.get(key)
        if live is not None and live[1] == queue and live[0] == priority:
            return   # same position: the live item still stands
        self._seq = seq = self._seq + 1
        self._live[key] = (priority, queue, seq)
        if live is not None and live[1] == queue and live[0] < priority:
            self._raised.add(key)   # raised: the item already in stands in for it
            return
        self._raised.discard(key)
        self._push(key, priority, queue, seq)

    def _push(self, key: str, priority: float, queue: str, seq: int) -> None:
        run = self._runs.get(queue)
        if run is None:
            run = self._runs[queue] = deque()
            self._heaps[queue] = []
        if not run or run[-1][0] <= priority:   # in order (a later sequence breaks the tie)
            run.append((priority, seq, key))
        else:
            heappush(self._heaps[queue], (priority, seq, key))
        self._items += 1
        if self._items > 64 and self._items > 4 * len(self.records):
            self._compact()

    def remove(self, key: str) -> None:
        if self.records.pop(key, None) is not None:
            del self._live[key]
            self._raised.discard(key)

    def lowest(self, queue: str, limit: int) -> list[tuple[str, Record]]:
        run = self._runs.get(queue)
        if run is None:
            return []
        heap = self._heaps[queue]
        head = self._settle(queue, run, heap)
        if head is None:
            return []
        if limit == 1:
            return [(head, self.records[head])]
        if self._raised:   # records behind the head may be where their stand-ins are: put them in place
            self._compact()
            run, heap = self._runs[queue], self._heaps[queue]
        live = self._live
        want = limit
        while True:
            found = [(key, self.records[key]) for _p, seq, key in heapq.nsmallest(want, chain(run, heap))
                     if live.get(key, NONE)[2] == seq]
            if len(found) >= limit or want >= len(run) + len(heap):
                return found[:limit]
            want *= 4

    def oldest(self, queue: str) -> tuple[str, Record] | None:
        order = self._by_last.get(queue)
        if order is None:
            # Kept from the first call on, so policies that never ask pay nothing for it.
            order = self._by_last[queue] = self._last_order(queue)
        run, heap = order
        records = self.records
        while run or heap:
            from_run = bool(run) and (not heap or run[0] < heap[0])
            last, key = run[0] if from_run else heap[0]
            record = records.get(key)
            if record is not None and record.queue == queue and record.last == last:
                return key, record
            if from_run:
                run.popleft()
            else:
                heappop(heap)
        return None

    def _last_order(self, queue: str) -> tuple[deque[tuple[float, str]], list[tuple[float, str]]]:
        return deque(sorted((r.last, key) for key, r in self.records.items() if r.queue == queue)), []

    def _settle(self, queue: str, run: deque[Item], heap: list[Item]) -> str | None:
        """Drop stale items until the smaller of the two heads is a true item; its key (None: empty).
        A stand-in that reaches a head makes way for its record's true item."""
        live, raised = self._live, self._raised
        while True:
            if run and (not heap or run[0] < heap[0]):
                _p, seq, key = run[0]
                if live.get(key, NONE)[2] == seq:
                    return key
                run.popleft()
            elif heap:
                _p, seq, key = heap[0]
                if live.get(key, NONE)[2] == seq:
                    return key
                heappop(heap)
            else:
                return None
            self._items -= 1
            if key in raised and live[key][1] == queue:
                raised.discard(key)
                priority, _q, true_seq = live[key]
                self._push(key, priority, queue, true_seq)
                run, heap = self._runs[queue], self._heaps[queue]   # (a compaction makes new ones)

    def value(self, name: str) -> float:   # (bound to values.__getitem__ in __init__: 0.0 when unset)
        return self.values[name]

    def set_value(self, name: str, value: float) -> None:   # (bound to values.__setitem__ in __init__)
        self.values[name] = value

    def rescale(self, factor: float) -> None:
        for key, record in self.records.items():
            record.priority = record.last + (record.priority - record.last) * factor
            seq = self._live[key][2]
            self._live[key] = (record.priority, record.queue, seq)
        self._compact()

    def _compact(self) -> None:
        """Rebuild every queue from the true items alone (no stale item, no stand-in)."""
        heaps: dict[str, list[Item]] = {queue: [] for queue in self._heaps}
        for key, (priority, queue, seq) in self._live.items():
            if queue not in heaps:
                heaps[queue] = []
            heaps[queue].append((priority, seq, key))
        for heap in heaps.values():
            heapq.heapify(heap)
        self._heaps = heaps
        self._runs = {queue: deque() for queue in heaps}
        self._raised.clear()
        self._items = len(self._live)


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
