"""Synthetic download traces for bench/policy_bench.py: each a documented model, reproducible by seed.

A trace is a list of (time in seconds, object id, size in bytes), sorted by time. Every model draws
objects (size, popularity weight, release time, how popularity fades), gives each object a number
of requests ~ Poisson(weight share x requests), and spreads an object's requests over time after its
release: uniformly for evergreen objects, exponentially for objects that are hot at release and fade.

Models (the `MODELS` table; numbers are the defaults):

* `lan30d`   30-day LAN download log. 20,000 objects, Zipf popularity (alpha 0.9); sizes log-normal,
             median 40 MB, sigma 1.6, clipped to 1 MB..8 GB; 70% of objects are released during the
             month and fade with a half-life of 2 days, 30% are evergreen; plus 20% of the requests
             are one-hit wonders (unique objects, same size law).
* `patchday` Game/OS patch days. A background of 8,000 evergreen objects (Zipf 0.7, sizes 1-200 MB
             log-normal median 20 MB) carries 40% of the requests; every 3 days a release of 10-40 big
             files (1-8 GB, log-uniform) carries the rest: hot for hours (half-life 12 h), then fades.
* `scan`     A stable Zipf core (15,000 objects, alpha 1.0, median 30 MB, sigma 1.4) with scans: 6
             times in 14 days a crawler or backup fetches 1,500 unique objects once each (sizes as the
             core) within two hours; about 20% of all requests are scan requests.
* `shift`    Weak skew and heavy tails: 30,000 objects, Zipf 0.6, Pareto sizes (alpha 1.2, from 1 MB,
             clipped at 16 GB); the popular set changes half-way (a second population replaces the
             first), 15% one-hit wonders; 20 days.
* `lanparty` A LAN party or classroom week: 7 days, three sessions (days 1, 3 and 5, starting at a
             random hour) in which 100-400 clients each pull 3-12 of the same 36 game/OS images
             (Zipf 0.8 among the images, 1-16 GB log-uniform), a client's downloads starting
             exponentially after the session start (mean 1 hour); plus background traffic for the
             rest of the requests: 20,000 evergreen objects (Zipf 0.8, log-normal median 30 MB,
             sigma 1.5, 1 MB-4 GB) and 20% one-hit wonders. The images are most of the bytes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

MB, GB = 1_000_000, 1_000_000_000
DAY = 86_400.0
Trace = list[tuple[float, int, int]]


def _zipf_weights(n: int, alpha: float, rng: random.Random) -> list[float]:
    weights = [1.0 / (rank ** alpha) for rank in range(1, n + 1)]
    rng.shuffle(weights)
    return weights


def _lognormal(rng: random.Random, median: float, sigma: float, lo: float, hi: float) -> int:
    return int(min(hi, max(lo, median * math.exp(rng.gauss(0.0, sigma)))))


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:
        return max(0, int(round(rng.gauss(mean, math.sqrt(mean)))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _spread(rng: random.Random, trace: Trace, obj: int, size: int, count: int, start: float, end: float,
            half_life: float | None) -> None:
    """Put `count` requests for `obj` between `start` and `end`, fading with `half_life` if given."""
    for _ in range(count):
        if half_life is None:
            ts = rng.uniform(start, end)
        else:
            ts = start + rng.expovariate(math.log(2) / half_life)
            if ts >= end:
                continue
        trace.append((ts, obj, size))


def lan30d(seed: int, requests: int) -> Trace:
    rng, days, trace = random.Random(seed), 30.0, []
    n = 20_000
    weights = _zipf_weights(n, 0.9, rng)
    total = sum(weights)
    popular = requests * 0.8
    for obj in range(n):
        size = _lognormal(rng, 40 * MB, 1.6, 1 * MB, 8 * GB)
        fading = rng.random() < 0.7
        start = rng.uniform(0, days * DAY) if fading else 0.0
        _spread(rng, trace, obj, size, _poisson(rng, popular * weights[obj] / total), start, days * DAY,
                2 * DAY if fading else None)
    for i in range(int(requests * 0.2)):
        trace.append((rng.uniform(0, days * DAY), n + i, _lognormal(rng, 40 * MB, 1.6, 1 * MB, 8 * GB)))
    return sorted(trace)


def patchday(seed: int, requests: int) -> Trace:
    rng, days, trace = random.Random(seed), 30.0, []
    n = 8_000
    weights = _zipf_weights(n, 0.7, rng)
    total = sum(weights)
    for obj in range(n):
        size = _lognormal(rng, 20 * MB, 1.0, 1 * MB, 200 * MB)
        _spread(rng, trace, obj, size, _poisson(rng, 0.4 * requests * weights[obj] / total), 0.0, days * DAY, None)
    releases = [(day * DAY + rng.uniform(0, DAY), rng.randint(10, 40)) for day in range(0, int(days), 3)]
    files = [(at, rng.random()) for at, count in releases for _ in range(count)]
    total = sum(w for _, w in files)
    for i, (at, w) in enumerate(files):
        size = int(math.exp(rng.uniform(math.log(1 * GB), math.log(8 * GB))))
        _spread(rng, trace, n + i, size, _poisson(rng, 0.6 * requests * w / total), at, days * DAY, 12 * 3600.0)
    return sorted(trace)


def scan(seed: int, requests: int) -> Trace:
    rng, days, trace = random.Random(seed), 14.0, []
    n = 15_000
    weights = _zipf_weights(n, 1.0, rng)
    total = sum(weights)
    for obj in range(n):
        size = _lognormal(rng, 30 * MB, 1.4, 1 * MB, 8 * GB)
        _spread(rng, trace, obj, size, _poisson(rng, 0.8 * requests * weights[obj] / total), 0.0, days * DAY, None)
    per_scan = int(0.2 * requests / 6)
    next_id = n
    for _ in range(6):
        begin = rng.uniform(0, days * DAY - 7200)
        for _ in range(per_scan):
            trace.append((begin + rng.uniform(0, 7200), next_id, _lognormal(rng, 30 * MB, 1.4, 1 * MB, 8 * GB)))
            next_id += 1
    return sorted(trace)


def shift(seed: int, requests: int) -> Trace:
    rng, days, trace = random.Random(seed), 20.0, []
    n = 30_000
    half = days * DAY / 2
    for phase in range(2):
        weights = _zipf_weights(n // 2, 0.6, rng)
        total = sum(weights)
        for i in range(n // 2):
            size = int(min(16 * GB, 1 * MB * rng.paretovariate(1.2)))
            _spread(rng, trace, phase * n + i, size, _poisson(rng, 0.85 * requests / 2 * weights[i] / total),
                    phase * half, (phase + 1) * half, None)
    for i in range(int(requests * 0.15)):
        trace.append((rng.uniform(0, days * DAY), 2 * n + i, int(min(16 * GB, 1 * MB * rng.paretovariate(1.2)))))
    return sorted(trace)


def lanparty(seed: int, requests: int) -> Trace:
    rng, days, trace = random.Random(seed), 7.0, []
    images = 36
    weights = _zipf_weights(images, 0.8, rng)
    sizes = [int(math.exp(rng.uniform(math.log(1 * GB), math.log(16 * GB)))) for _ in range(images)]
    for day in (1, 3, 5):
        start = day * DAY + rng.uniform(0, 12 * 3600.0)
        for _client in range(rng.randint(100, 400)):
            wanted: set[int] = set()
            count = rng.randint(3, 12)
            while len(wanted) < count:
                wanted.add(rng.choices(range(images), weights)[0])
            begin = start + rng.expovariate(1 / 3600.0)
            for obj in wanted:
                trace.append((begin + rng.uniform(0, 600.0), obj, sizes[obj]))
    background = max(0, requests - len(trace))
    n = 20_000
    weights = _zipf_weights(n, 0.8, rng)
    total = sum(weights)
    for obj in range(n):
        size = _lognormal(rng, 30 * MB, 1.5, 1 * MB, 4 * GB)
        _spread(rng, trace, images + obj, size, _poisson(rng, 0.8 * background * weights[obj] / total), 0.0,
                days * DAY, None)
    for i in range(int(background * 0.2)):
        trace.append((rng.uniform(0, days * DAY), images + n + i, _lognormal(rng, 30 * MB, 1.5, 1 * MB, 4 * GB)))
    return sorted(trace)


MODELS: dict[str, Callable[[int, int], Trace]] = {"lan30d": lan30d, "patchday": patchday, "scan": scan, "shift": shift,
                                                  "lanparty": lanparty}
SEEDS = {"lan30d": 30, "patchday": 7, "scan": 14, "shift": 20, "lanparty": 41}


def unique_bytes(trace: Trace) -> int:
    return sum({obj: size for _, obj, size in trace}.values())
