"""The capture's figures, published to Prometheus (cachetap.metrics) away from the redirect path.

The loop counts in plain ints and Counters (Pipeline, Redirector, SightingRelay, BatchSender) and
tallies redirect latencies into buckets (core.tally): no metrics call runs between a GET's arrival
and its 302. `MetricsPublisher.maybe_publish()` runs from the sniffer's idle hook, when the kernel's
queue is drained, and adds what changed since the last time, at most once a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from cachetap import metrics
from cachetap.capture.redirector import REFUSALS

log = logging.getLogger(__name__)
PUBLISH_EVERY = 1.0


class Deltas:
    """Adds to Prometheus counters what a plain running total gained since the last call."""

    def __init__(self) -> None:
        self._seen: dict[tuple, int] = {}
        self._children: dict[tuple, Any] = {}

    def add(self, counter: Any, total: int, *labels: str) -> None:
        key = (id(counter), *labels)
        gained = total - self._seen.get(key, 0)
        if gained <= 0:
            return
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels) if labels else counter
        child.inc(gained)
        self._seen[key] = total


class _Sized(Protocol):
    def __len__(self) -> int: ...


class MetricsPublisher:
    """Publishes a capture's counters: the pipeline's, and those of the relay, redirect index and
    live source when there are such."""

    def __init__(self, pipeline: Any, relay: Any = None, index: _Sized | None = None, source: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline, self.relay, self.index, self.source = pipeline, relay, index, source
        self.clock = clock
        self.metrics = metrics.capture()
        self.deltas = Deltas()
        self.published_at = clock()
        # Series that exist from the start (at 0), so that rates and dashboards see them before
        # the first event.
        m = self.metrics
        m.requests.labels("count", "")
        if relay is not None:
            m.sightings_dropped.labels("relay")
        if pipeline.redirector is not None:
            m.requests.labels("redirect", "")
            for reason in REFUSALS:
                m.not_redirected.labels(reason)

    def maybe_publish(self) -> None:
        if self.clock() - self.published_at >= PUBLISH_EVERY:
            self.publish()

    def publish(self) -> None:
        self.published_at = self.clock()
        try:
            self._publish()
        except Exception:  # figures are never worth the capture: logged, and tried again next time
            log.exception("publishing the capture's metrics failed")

    def _publish(self) -> None:
        m, add, pipeline = self.metrics, self.deltas.add, self.pipeline
        add(m.packets, pipeline.packets)
        for name, count in list(pipeline.decisions.items()):
            decision, _, reason = name.partition(":")
            add(m.requests, count, decision, reason)
        for reason, count in list(pipeline.rejected.items()):
            add(m.malformed, count, reason)
        if pipeline.redirector is not None:
            for reason, count in list(pipeline.redirector.skipped.items()):
                add(m.not_redirected, count, reason)
        counts, total = pipeline.latency.take()
        if any(counts):
            metrics.add_observations(m.redirect_latency, counts, total)
        if self.relay is not None:
            add(m.sightings_dropped, self.relay.counters.dropped, "relay")
        if self.index is not None:
            m.index_keys.set(len(self.index))
        if self.source is not None:
            add(m.kernel_drops, self.source.stats()["kernel_drops"])


def sender_report() -> Callable[[Any], None]:
    """What a BatchSender calls (from its own thread) with its counters now and then."""
    m, deltas = metrics.capture(), Deltas()
    m.sightings_dropped.labels("buffer")

    def report(counters: Any) -> None:
        deltas.add(m.sightings_sent, counters.sent_items)
        deltas.add(m.batches_sent, counters.sent_batches)
        deltas.add(m.sightings_dropped, counters.dropped, "buffer")
        deltas.add(m.send_errors, counters.send_errors)

    return report
