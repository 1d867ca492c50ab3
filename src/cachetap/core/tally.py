"""Counting values into histogram buckets with plain ints, for hot paths that must not call a metrics
library per event (capture/prometheus.py publishes the counts to Prometheus off the hot path)."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds in seconds of the redirect latency buckets: the 302 must leave within a fraction of a
# millisecond to beat an origin next door. The last bucket takes everything above.
REDIRECT_LATENCY_BOUNDS = (0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01,
                           0.05, float("inf"))


class BucketTally:
    """`add(value)` counts a value in the first bucket whose upper bound is at least the value."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = REDIRECT_LATENCY_BOUNDS) -> None:
        if not bounds or bounds[-1] != float("inf") or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bounds must rise and end with inf, got {bounds}")
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def take(self) -> tuple[list[int], float]:
        """The counts and sum since the last take, and start again from zero."""
        counts, total = self.counts, self.total
        self.counts, self.total = [0] * len(self.bounds), 0.0
        return counts, total
