"""BucketTally: plain-int histogram buckets, with Prometheus' rule (a value goes in the first bucket
whose upper bound is at least the value)."""

import pytest

from cachetap.core.tally import REDIRECT_LATENCY_BOUNDS, BucketTally


def test_values_fall_in_the_first_bucket_at_least_as_big():
    tally = BucketTally((0.001, 0.01, float("inf")))
    for value in (0.0005, 0.001, 0.0010001, 0.01, 5.0, -1.0):
        tally.add(value)
    assert tally.counts == [3, 2, 1]
    assert tally.total == pytest.approx(0.0005 + 0.001 + 0.0010001 + 0.01 + 5.0 - 1.0)


def test_take_returns_what_was_counted_and_starts_again():
    tally = BucketTally()
    tally.add(0.00012)
    counts, total = tally.take()
    assert sum(counts) == 1 and counts[REDIRECT_LATENCY_BOUNDS.index(0.00015)] == 1 and total == 0.00012
    assert tally.take() == ([0] * len(REDIRECT_LATENCY_BOUNDS), 0.0)


@pytest.mark.parametrize("bounds", [(), (1.0, 2.0), (2.0, 1.0, float("inf")), (1.0, 1.0, float("inf"))])
def test_bounds_must_rise_and_end_with_infinity(bounds):
    with pytest.raises(ValueError):
        BucketTally(bounds)
