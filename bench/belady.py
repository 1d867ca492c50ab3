"""Offline Belady for byte hit ratio, exact (every resident considered, no sampling).

Rule: on a miss, the object comes in unless it is never requested again or its next request comes
after those of the residents it would push out; victims are the residents whose next request is
farthest away. For byte hit ratio a byte's value is the same in every object, so the farthest next
request goes first whatever the size (this is where it differs from libCacheSim's BeladySize, which
samples 128 objects and weighs distance by size for the object miss ratio). With objects of
different sizes no polynomial rule is provably optimal; this is the offline reference online
policies are measured against, computed in the same model as libCacheSim's (an admitted object is
there for its next request).
"""

from __future__ import annotations

import heapq

NEVER = float("inf")


def belady_bhr(trace: list[tuple[float, int, int]], capacity: int) -> float:
    n = len(trace)
    next_use = [NEVER] * n
    seen: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        obj = trace[i][1]
        next_use[i] = seen.get(obj, NEVER)
        seen[obj] = i
    resident: dict[int, float] = {}   # obj -> its next request (index)
    sizes: dict[int, int] = {}
    heap: list[tuple[float, int]] = []   # (-next request, obj), stale items skipped
    used = hit_bytes = total = 0
    for i, (_ts, obj, size) in enumerate(trace):
        total += size
        nxt = next_use[i]
        if obj in resident:
            hit_bytes += size
            resident[obj] = nxt
            heapq.heappush(heap, (-nxt, obj))
            continue
        if nxt == NEVER or size > capacity:
            continue
        popped: list[tuple[float, int]] = []
        while used + size > capacity and heap:
            neg, victim = heap[0]
            if resident.get(victim) != -neg:
                heapq.heappop(heap)
                continue
            if -neg <= nxt:
                break
            heapq.heappop(heap)
            popped.append((neg, victim))
            used -= sizes[victim]
        if used + size > capacity:
            for item in popped:   # not worth it: the residents stay
                heapq.heappush(heap, item)
                used += sizes[item[1]]
            continue
        for _neg, victim in popped:
            del resident[victim]
            del sizes[victim]
        resident[obj] = nxt
        sizes[obj] = size
        used += size
        heapq.heappush(heap, (-nxt, obj))
    return hit_bytes / total if total else 0.0
