"""A virtual-clock replay of requests through the production admission, freshness and eviction code.

`Simulation.request(ts, key, size, sent)` plays one request. What it models, per request:

* a ready, fresh stored copy: a hit, `sent` bytes served from the cache (the policy is told);
* otherwise the origin serves it. The request counts toward admission (requests within
  `admission_window` > `admission_threshold`, as `analyze` counts them), then the policy's own
  admission decides; an admitted object reserves its bytes at once (victims are evicted then);
* bypass model (`download_rate` bytes/s): the download takes size / rate seconds, and every request
  until it has finished still goes to the origin; each download costs `size` origin bytes (an object
  evicted while downloading costs what was fetched so far). `download_rate` None is the model of
  libCacheSim and most papers: an admitted object is there for its very next request.
* freshness: a stored copy is fresh until `core.freshness.expires_at` (no response headers in a log:
  `default_ttl`); an expired copy is not served until the next revalidation pass (every
  `revalidate_interval`), which finds it unchanged (logs cannot tell otherwise).

Objects outside [min_size, max_size] are never admitted, as the probe rules would refuse them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from cachetap.core import admission
from cachetap.core.freshness import expires_at
from cachetap.core.policy.base import Policy
from cachetap.core.policy.memory import MemoryHits

NO_HEADERS: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class SimConfig:
    admission_threshold: int = 1
    admission_window: float = 86_400.0
    download_rate: float | None = None     # bytes per second; None: admitted objects are there at once
    default_ttl: float = 7 * 86_400.0
    max_ttl: float = 90 * 86_400.0
    revalidate_interval: float = 600.0
    min_size: int = 0
    max_size: int = 1 << 62
    timeline_step: float = 3600.0          # seconds between points of the hit-ratio timeline


@dataclass
class SimResult:
    requests: int = 0
    hits: int = 0
    bytes_requested: int = 0
    bytes_hit: int = 0                      # served from the cache
    origin_bytes_for_cache: int = 0         # downloads made by the cache
    downloads: int = 0
    downloads_cancelled: int = 0            # evicted before they finished
    evictions: int = 0
    peak_disk: int = 0                      # bytes stored or reserved at most
    not_cacheable: int = 0                  # requests for objects outside min_size..max_size
    timeline: list[tuple[float, float]] = field(default_factory=list)   # (time, byte hit ratio so far)

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0

    @property
    def object_hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def net_saved(self) -> int:
        return self.bytes_hit - self.origin_bytes_for_cache

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(byte_hit_ratio=round(self.byte_hit_ratio, 6), object_hit_ratio=round(self.object_hit_ratio, 6),
                    net_saved=self.net_saved)
        return data


class Simulation:
    def __init__(self, policy: Policy, config: SimConfig) -> None:
        self.policy = policy
        self.config = config
        self.counts = MemoryHits(config.admission_window)
        self.ready_at: dict[str, float] = {}     # resident key -> when its download completes
        self.started: dict[str, float] = {}      # resident key -> when its download started
        self.expires: dict[str, float] = {}      # resident key -> freshness end
        self.result = SimResult()
        self._next_point: float | None = None

    def request(self, ts: float, key: str, size: int, sent: int | None = None) -> bool:
        """Play one request for `key` (object of `size` bytes; `sent` bytes delivered); True on a hit."""
        r, cfg, policy = self.result, self.config, self.policy
        sent = size if sent is None else sent
        r.requests += 1
        r.bytes_requested += sent
        if self._next_point is None:
            self._next_point = ts + cfg.timeline_step
        elif ts >= self._next_point:
            r.timeline.append((ts, r.byte_hit_ratio))
            self._next_point = ts + cfg.timeline_step
        ready = self.ready_at.get(key)
        if ready is not None and ready <= ts and self._fresh(key, ts):
            r.hits += 1
            r.bytes_hit += sent
            policy.hit(key, ts)
            return True
        if ready is not None:
            policy.hit(key, ts)   # still downloading or awaiting revalidation: requested all the same
            return False
        if not cfg.min_size <= size <= cfg.max_size:
            r.not_cacheable += 1
            return False
        policy.miss(key, size, ts)
        if not admission.admit(self.counts.record(key, ts), cfg.admission_threshold):
            return False
        if not policy.admit(key, size, ts):
            return False
        for victim in policy.insert(key, size, ts):
            self._evicted(victim, ts)
        duration = 0.0 if cfg.download_rate is None else size / cfg.download_rate
        self.started[key] = ts
        self.ready_at[key] = ts + duration
        self.expires[key] = expires_at(ts + duration, NO_HEADERS, cfg.default_ttl, cfg.max_ttl)
        r.downloads += 1
        r.origin_bytes_for_cache += size
        r.peak_disk = max(r.peak_disk, int(policy.used))
        return False

    def finish(self, ts: float) -> SimResult:
        """Close the timeline at `ts` (the last request's time) and return the figures."""
        self.result.timeline.append((ts, self.result.byte_hit_ratio))
        return self.result

    def _fresh(self, key: str, ts: float) -> bool:
        cfg = self.config
        while ts >= self.expires[key]:
            # Revalidated (unchanged) by the first pass after it expired; stale until then.
            step = cfg.revalidate_interval
            checked = math.ceil(self.expires[key] / step) * step if step > 0 else self.expires[key]
            if ts < checked:
                return False
            self.expires[key] = max(checked + 1.0, expires_at(checked, NO_HEADERS, cfg.default_ttl, cfg.max_ttl))
        return True

    def _evicted(self, key: str, ts: float) -> None:
        r = self.result
        r.evictions += 1
        ready = self.ready_at.pop(key, None)
        self.started.pop(key, None)
        self.expires.pop(key, None)
        if ready is not None and ready > ts:
            # Cancelled mid-way: the bytes not fetched yet were never spent.
            r.downloads_cancelled += 1
            r.origin_bytes_for_cache -= int((ready - ts) * (self.config.download_rate or 0.0))
