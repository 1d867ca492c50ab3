"""The capture's heartbeat report: rates from the pipeline's own counters, read off the loop."""

from __future__ import annotations

from cachetap.capture.pipeline import Pipeline
from cachetap.capture.report import CaptureReport
from cachetap.settings import load_settings
from cachetap.testing.pcaps import LINKTYPE_ETHERNET, frame_bytes, http_get_packets


def feed_gets(pipeline: Pipeline, count: int, port0: int) -> None:
    for i in range(count):
        for packet in http_get_packets("10.0.0.5", "93.184.216.34", "cdn.example.org", f"/f{i}.iso",
                                       client_port=port0 + i):
            pipeline.feed(packet.time, LINKTYPE_ETHERNET, frame_bytes(packet))


def test_report_counts_gets_per_second_between_beats(tmp_path):
    pipeline = Pipeline(load_settings(cache_dir=tmp_path))
    clock = iter([100.0, 102.0]).__next__
    report = CaptureReport("eth1", pipeline, index_size=lambda: 7, health=lambda: {"http://c1:8642": True},
                           clock=clock)
    feed_gets(pipeline, 3, 41000)
    first = report()["report"]
    assert first["interface"] == "eth1" and first["requests"] == 3 and "gets_per_s" not in first
    assert first["index_keys"] == 7 and first["cache_servers_ok"] == {"http://c1:8642": True}
    feed_gets(pipeline, 4, 42000)
    second = report()["report"]
    assert second["requests"] == 7 and second["gets_per_s"] == 2.0 and second["redirects_per_s"] == 0.0
