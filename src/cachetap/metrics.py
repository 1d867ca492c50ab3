"""Prometheus metrics of every cachetap process, summed per machine.

Every long-running process of a machine (capture and its sighting sender, Celery workers and their
pool processes, beat, the cache server's workers) calls `use_box_directory(cache_dir)` at start: from
then on prometheus-client keeps its values in files under `cache_dir/metrics` (its multiprocess
mode), and whichever process serves /metrics sums them all (`exposition`). `cachetap run` empties the
folder at start, as prometheus-client asks; gauges of processes that are gone are dropped at each
scrape (the folder is this machine's, so their pids can be checked).

The metrics of each component are defined here, in one place, so that the names the Grafana
dashboard (docs/grafana-dashboard.json) uses can be checked against one list.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from cachetap.core.tally import REDIRECT_LATENCY_BOUNDS
from cachetap.lifetime import pid_is_alive

T = TypeVar("T")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIRECTORY = "metrics"
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")

# Objects take seconds to hours; a redirect is sent within a fraction of a millisecond.
DOWNLOAD_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, float("inf"))

# Every metric lives in this registry in a process without a multiprocess folder (tests, `cachetap
# replay --dry-run`); with one, the folder is what is exposed.
REGISTRY = CollectorRegistry(auto_describe=True)


# ---- the per-machine folder -------------------------------------------------------------------------

def box_directory(cache_dir: Path) -> Path:
    return cache_dir / DIRECTORY


def enable_multiprocess(directory: str | os.PathLike[str]) -> None:
    """Keep metric values in files under `directory` from now on (and in forked children); metrics
    made before keep their in-memory values."""
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus-client picks its value class at import time from the environment.
    values.ValueClass = values.MultiProcessValue()


def multiprocess_directory() -> str | None:
    """The folder this process writes its values to, if any."""
    directory = os.environ.get(MULTIPROC_ENV)
    return directory if directory and values.ValueClass is not values.MutexValue else None


def use_box_directory(cache_dir: Path) -> Path:
    """Write this process's metrics to the machine's folder (idempotent; call before forking)."""
    directory = box_directory(cache_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    if multiprocess_directory() != str(directory):
        enable_multiprocess(directory)
    return directory


def clear_box_directory(cache_dir: Path) -> None:
    """Forget the values of earlier runs (before any process of this run starts)."""
    directory = box_directory(cache_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges (downloads active, index size) of processes that are gone; counters
    stay, so totals never go down when a process is replaced."""
    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is not None and not pid_is_alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), directory)


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """The text exposition: the sum over the machine's folder when this process writes to one, else
    `registry` (by default every component's metrics of this process)."""
    directory = multiprocess_directory()
    if directory is not None:
        forget_dead_processes(directory)
        summed = CollectorRegistry()
        MultiProcessCollector(summed, path=directory)
        return generate_latest(summed)
    return generate_latest(registry or REGISTRY)


def add_observations(histogram: Histogram, bucket_counts: Sequence[int], total: float) -> None:
    """Add pre-counted observations to an unlabelled histogram: `bucket_counts[i]` values fell in
    its i-th bucket (not cumulative), summing to `total`. prometheus-client has only observe(), one
    value at a time; this writes its per-bucket values directly (one write per non-empty bucket)."""
    buckets = histogram._buckets  # noqa: SLF001 - see above
    if len(bucket_counts) != len(buckets):
        raise ValueError(f"{len(bucket_counts)} counts for {len(buckets)} buckets")
    for value, count in zip(buckets, bucket_counts):
        if count:
            value.inc(count)
    histogram._sum.inc(total)  # noqa: SLF001


# ---- the components' metrics ---------------------------------------------------------------------------
# Each is made on first use in a process, after that process chose its folder.

class CaptureMetrics:
    """Published by the capture process from its plain counters, off the hot path (capture/prometheus.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.packets = Counter("cachetap_capture_packets", "Frames the capture read (after the kernel filter).", registry=r)
        self.kernel_drops = Counter("cachetap_capture_kernel_drops", "Frames the kernel dropped before the capture read them.", registry=r)
        self.requests = Counter("cachetap_capture_requests", "HTTP GETs seen, by decision (count, redirect, ignore) and reason.",
                                ["decision", "reason"], registry=r)
        self.malformed = Counter("cachetap_capture_malformed", "Frames or request heads rejected as malformed, by reason.",
                                 ["reason"], registry=r)
        self.not_redirected = Counter("cachetap_capture_not_redirected", "GETs of ready keys not redirected, by reason.",
                                      ["reason"], registry=r)
        self.redirect_latency = Histogram("cachetap_capture_redirect_latency_seconds",
                                          "From the kernel's capture timestamp of a GET to its 302 sent.",
                                          buckets=REDIRECT_LATENCY_BOUNDS, registry=r)
        self.index_keys = Gauge("cachetap_capture_index_keys", "Ready keys in the capture's redirect index.",
                                multiprocess_mode="livemax", registry=r)
        self.sightings_sent = Counter("cachetap_capture_sightings_sent", "Sightings sent to the analyze queue.", registry=r)
        self.batches_sent = Counter("cachetap_capture_batches_sent", "Batches of sightings sent to the analyze queue.", registry=r)
        self.sightings_dropped = Counter("cachetap_capture_sightings_dropped",
                                         "Sightings dropped: the sender process lagged (relay) or the broker was down too long (buffer).",
                                         ["where"], registry=r)
        self.send_errors = Counter("cachetap_capture_send_errors", "Failed attempts to send a batch to the broker.", registry=r)


class AnalyzeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sightings = Counter("cachetap_analyze_sightings", "Sightings received, by outcome (counted, or why dropped).",
                                 ["outcome"], registry=r)
        self.admitted = Counter("cachetap_analyze_admitted", "Keys admitted: probed, accepted and queued for download.", registry=r)
        self.rejected = Counter("cachetap_analyze_rejected", "Keys not admitted after the probe, by reason.", ["reason"], registry=r)
        self.missed_bytes = Counter("cachetap_analyze_missed_bytes",
                                    "Bytes clients fetched from origins for objects not ready, as far as a probe told their size.",
                                    registry=r)


class DownloadMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.active = Gauge("cachetap_download_active", "Downloads running now.", multiprocess_mode="livesum", registry=r)
        self.bytes = Counter("cachetap_download_bytes", "Bytes downloaded from origins and published into the store.", registry=r)
        self.failures = Counter("cachetap_download_failures", "Failed download attempts, by reason and outcome (retrying, gave_up).",
                                ["reason", "outcome"], registry=r)
        self.duration = Histogram("cachetap_download_duration_seconds", "Seconds per published download.",
                                  buckets=DOWNLOAD_SECONDS_BUCKETS, registry=r)


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.objects = Gauge("cachetap_store_objects", "Objects stored and ready.", multiprocess_mode="mostrecent", registry=r)
        self.bytes = Gauge("cachetap_store_bytes", "Bytes of the objects stored and ready.", multiprocess_mode="mostrecent", registry=r)
        self.quota = Gauge("cachetap_store_quota_bytes", "disk_quota (0: none).", multiprocess_mode="mostrecent", registry=r)
        self.free = Gauge("cachetap_store_free_bytes", "Bytes free on the cache disks (beat: summed over the live cache nodes).", multiprocess_mode="mostrecent", registry=r)
        self.evictions = Counter("cachetap_store_evictions", "Objects removed from the store, by reason.", ["reason"], registry=r)

    def measured(self, objects: int, stored: int, quota: int, free: int | None) -> None:
        """The store's size as a pass over the catalog found it (quota pass, stats sample)."""
        self.objects.set(objects)
        self.bytes.set(stored)
        self.quota.set(quota)
        if free is not None:
            self.free.set(free)


_made: dict[type, object] = {}
_making = threading.Lock()


def _once(kind: type[T]) -> T:
    """The process's one instance of a component's metrics. Not functools.cache: two threads of a
    download worker's pool asking at once would both register the same names (DuplicateTimeseries)."""
    made = _made.get(kind)
    if made is None:
        with _making:
            made = _made.get(kind)
            if made is None:
                made = _made[kind] = kind(REGISTRY)
    return made  # type: ignore[return-value]


def capture() -> CaptureMetrics:
    return _once(CaptureMetrics)


def analyze() -> AnalyzeMetrics:
    return _once(AnalyzeMetrics)


def download() -> DownloadMetrics:
    return _once(DownloadMetrics)


def store() -> StoreMetrics:
    return _once(StoreMetrics)
