"""MetricsPublisher: the capture's plain counters reach Prometheus as deltas, and only when published."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from cachetap import metrics
from cachetap.capture.pipeline import Pipeline
from cachetap.capture.prometheus import MetricsPublisher, sender_report
from cachetap.capture.batcher import BatchCounters
from cachetap.core.tally import REDIRECT_LATENCY_BOUNDS
from cachetap.testing.pcaps import LINKTYPE_ETHERNET, frame_bytes
from tests.capture.test_capture_pipeline import (READY, Redirect, cache_server, clock, get,  # noqa: F401
                                                 redirector, settings)

REGISTRY = metrics.REGISTRY


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def feed(pipeline: Pipeline, packets) -> list:
    return [obs for p in packets for obs in pipeline.feed(float(p.time), LINKTYPE_ETHERNET, frame_bytes(p))]


@pytest.fixture(autouse=True)
def in_memory_values():
    if metrics.multiprocess_directory() is not None:
        pytest.skip("this process writes its metrics to a multiprocess folder")


def test_counts_reach_prometheus_only_when_published_and_each_only_once(settings, redirector, clock):
    pipeline = Pipeline(settings, redirector=redirector, clock=lambda: clock[0])
    report = MetricsPublisher(pipeline, index=redirector.index, clock=lambda: clock[0])
    before = {"packets": sample("cachetap_capture_packets_total"),
              "redirect": sample("cachetap_capture_requests_total", decision="redirect", reason=""),
              "ignored": sample("cachetap_capture_requests_total", decision="ignore", reason="extension"),
              "fast": sample("cachetap_capture_redirect_latency_seconds_bucket", le="0.00015"),
              "slow": sample("cachetap_capture_redirect_latency_seconds_bucket", le="0.005"),
              "count": sample("cachetap_capture_redirect_latency_seconds_count")}
    packets = get() + get("/index.html")
    (redirect, ignored) = feed(pipeline, packets)
    assert isinstance(redirect.decision, Redirect) and ignored.decision.kind == "ignore"
    pipeline.redirected(redirect, redirect.segment.ts + 0.00012)  # what the live loop reports after the send
    assert sample("cachetap_capture_packets_total") == before["packets"]  # nothing until published
    report.maybe_publish()
    assert sample("cachetap_capture_packets_total") == before["packets"]  # not due within a second
    clock[0] += 1.0
    report.maybe_publish()
    assert sample("cachetap_capture_packets_total") == before["packets"] + len(packets)
    assert sample("cachetap_capture_requests_total", decision="redirect", reason="") == before["redirect"] + 1
    assert sample("cachetap_capture_requests_total", decision="ignore", reason="extension") == before["ignored"] + 1
    assert sample("cachetap_capture_redirect_latency_seconds_bucket", le="0.00015") == before["fast"] + 1
    assert sample("cachetap_capture_redirect_latency_seconds_count") == before["count"] + 1
    assert sample("cachetap_capture_index_keys") == 1
    report.publish()  # nothing new: nothing added again
    assert sample("cachetap_capture_packets_total") == before["packets"] + len(packets)
    assert sample("cachetap_capture_redirect_latency_seconds_count") == before["count"] + 1
    pipeline.latency.add(0.004)
    report.publish()
    assert sample("cachetap_capture_redirect_latency_seconds_bucket", le="0.005") == before["slow"] + 2
    assert sample("cachetap_capture_redirect_latency_seconds_count") == before["count"] + 2


def test_the_batch_senders_counters_are_added_as_they_grow():
    report = sender_report()
    before = sample("cachetap_capture_sightings_sent_total"), sample("cachetap_capture_sightings_dropped_total", where="buffer")
    counters = BatchCounters(sent_batches=1, sent_items=10, dropped=2)
    report(counters)
    report(counters)
    counters.sent_items += 5
    report(counters)
    assert sample("cachetap_capture_sightings_sent_total") == before[0] + 15
    assert sample("cachetap_capture_sightings_dropped_total", where="buffer") == before[1] + 2


def test_pre_counted_observations_match_observing_one_by_one():
    from prometheus_client import Histogram, generate_latest

    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("h", "h", buckets=REDIRECT_LATENCY_BOUNDS, registry=one)
    batched = Histogram("h", "h", buckets=REDIRECT_LATENCY_BOUNDS, registry=many)
    values = [0.00004, 0.00012, 0.00012, 0.0009, 0.3]
    for v in values:
        single.observe(v)
    from cachetap.core.tally import BucketTally
    tally = BucketTally()
    for v in values:
        tally.add(v)
    metrics.add_observations(batched, *tally.take())
    strip = lambda text: [line for line in text.decode().splitlines() if "_created" not in line]  # noqa: E731
    assert strip(generate_latest(one)) == strip(generate_latest(many))
