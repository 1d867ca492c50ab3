"""Load the requests of every input once, then replay them per policy and cache size."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cachetap.core.policy import make_policy
from cachetap.core.policy.memory import MemoryStore
from cachetap.core.simulation import SimConfig, SimResult, Simulation
from cachetap.settings import Settings
from cachetap.simulate.inputs import read_requests

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?", re.I)


def parse_size(text: str) -> tuple[str, float]:
    """'500G' -> ('bytes', 536870912000); '5%' -> ('percent', 5.0). ValueError names the problem."""
    text = text.strip()
    if text.endswith("%"):
        value = float(text[:-1])
        if not 0 < value <= 100:
            raise ValueError(f"{text}: a percentage of the unique bytes must be in (0, 100]")
        return "percent", value
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size: write e.g. 500G, 2T, 800000000 or 5%")
    value = float(match.group(1)) * UNITS[match.group(2).upper()]
    if value < 1:
        raise ValueError(f"{text}: a cache must hold at least one byte")
    return "bytes", value


@dataclass
class Workload:
    times: list[float] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def unique_bytes(self) -> int:
        return sum(dict(zip(self.keys, self.sizes)).values())


class Progress:
    """One line on stderr every `every` seconds while a long input is read or replayed."""

    def __init__(self, enabled: bool, every: float = 2.0) -> None:
        self.enabled, self.every, self._last = enabled, every, time.monotonic()

    def say(self, text: str) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            print(text, file=sys.stderr, flush=True)


def load(paths: list[Path], settings: Settings, progress: Progress) -> Workload:
    work = Workload()
    rows: list[tuple[float, str, int, int]] = []
    for path in paths:
        total = max(1, path.stat().st_size)
        for row in read_requests(path, settings, work.skipped,
                                 lambda pos, p=path: progress.say(f"reading {p.name}: {len(rows):,} requests "
                                                                  f"({min(100, 100 * pos // total)}%)")):
            rows.append(row)
    rows.sort(key=lambda r: r[0])   # several logs (or rotated files) interleave by time
    for ts, key, size, sent in rows:
        work.times.append(ts)
        work.keys.append(key)
        work.sizes.append(size)
        work.sent.append(sent)
    return work


def simulate(work: Workload, policy: str, capacity: int, config: SimConfig, progress: Progress) -> SimResult:
    sim = Simulation(make_policy(policy, MemoryStore(), capacity), config)
    request = sim.request
    n = len(work.keys)
    for i, (ts, key, size, sent) in enumerate(zip(work.times, work.keys, work.sizes, work.sent)):
        request(ts, key, size, sent)
        if i % 50_000 == 0:
            progress.say(f"{policy} at {capacity / 1e9:,.0f} GB: {i:,} of {n:,} requests")
    return sim.finish(work.times[-1] if work.times else 0.0)


def sim_config(settings: Settings, threshold: int, rate: float | None, span: float) -> SimConfig:
    return SimConfig(admission_threshold=threshold, admission_window=settings.admission_window,
                     download_rate=rate, default_ttl=settings.default_ttl, max_ttl=settings.max_ttl,
                     revalidate_interval=settings.revalidate_interval, min_size=settings.min_size,
                     max_size=settings.max_size, timeline_step=max(60.0, span / 200))
