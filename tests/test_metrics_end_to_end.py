"""Prometheus metrics from every component, summed over real processes of one machine: a `cachetap
replay` of a pcap, real analyze and download workers fetching from a real origin, the cache server
serving; its /metrics shows each counter moved by exactly what happened."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cachetap.core.urls import object_path
from cachetap.settings import load_settings
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.origin import Origin, Resource
from cachetap.testing.pcaps import hostile_cases, http_get_packets, write_capture
from cachetap.testing.waiting import free_port, wait_for
from cachetap.testing.workers import CeleryWorker
from tests.test_end_to_end_replay import cachetap, cli_env, curl

MiB = 1 << 20
SIZE = 2 * MiB + 77
WAIT = 240
DASHBOARD = Path(__file__).parents[1] / "docs" / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\bcachetap_[a-z0-9_]+")


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from the text exposition."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.skipif(os.geteuid() != 0, reason="the live capture needs root (CAP_NET_RAW)")
def test_metrics_of_capture_analyze_download_store_and_serve_add_up(tmp_path):
    with Origin() as origin:
        origin.add("/pub/good.iso", Resource(size=SIZE))
        origin.add("/pub/tiny.iso", Resource(size=1000))                       # rejected: too small
        origin.add("/pub/liar.iso", Resource(size=SIZE, content_md5="1B2M2Y8AsgTpgAmY7PhCfg=="))  # fails
        settings = load_settings(cache_dir=tmp_path / "cache", http_ports=[origin.port], admission_threshold=0,
                                 resolve_overrides={"files.test": ["127.0.0.1"]},
                                 fetch_allow_networks=LOOPBACK_NETWORKS, min_size=MiB, download_attempts=1,
                                 serve_host="127.0.0.1", serve_port=free_port(), run_as_user="")
        packets = []
        for n, path in enumerate(("/pub/good.iso", "/pub/tiny.iso", "/pub/liar.iso", "/index.html")):
            packets += http_get_packets("10.0.0.5", "127.0.0.1", f"files.test:{origin.port}", path,
                                        server_port=origin.port, client_port=40000 + n, start=time.time() + n)
        packets.append(next(c.frame for c in hostile_cases() if c.name == "arp"))  # malformed: not_ip
        capture = write_capture(tmp_path / "gets.pcap", packets)
        with CeleryWorker(settings, ["analyze"], name="analyzer") as analyzer, \
                CeleryWorker(settings, ["download"], pool="threads", concurrency=2, name="downloader") as downloader, \
                CacheServer(settings) as base:
            replayed = cachetap(settings, "replay", "--quiet", str(capture))
            assert replayed.returncode == 0, replayed.stderr

            def settled() -> bool:
                rows = cachetap(settings, "ls", "--json").stdout.splitlines()
                return len(rows) == 3 and all(json.loads(r)["state"] in ("ready", "failed", "rejected") for r in rows)
            wait_for(settled, "three entries settled", timeout=WAIT, step=0.5,
                     detail=lambda: analyzer.log_text()[-2000:] + downloader.log_text()[-3000:])
            (row,) = [json.loads(line) for line in cachetap(settings, "ls", "--json", "--state", "ready").stdout.splitlines()]
            url = base + object_path(row["key"], row["filename"])
            assert len(curl(url)) == SIZE
            assert len(curl("-r", "1000-1999", url)) == 1000
            assert httpx.get(base + object_path("0" * 32, "gone.iso")).status_code == 404  # a fallback
            with LiveCapture(settings):  # redirect mode on lo, its own port: it publishes its index size
                wait_for(lambda: value(scrape(base), "cachetap_capture_index_keys") == 1, "the capture's index size")
                live = scrape(base)
            cleaned = cachetap(settings, "cleanup")  # the quota pass measures the store
            assert cleaned.returncode == 0, cleaned.stderr
            store = scrape(base)
            assert cachetap(settings, "purge", row["key"]).returncode == 0
            samples = scrape(base)

    # capture (the replay process): every frame, four GETs, three counted and sent
    assert value(samples, "cachetap_capture_packets_total") == len(packets)
    assert value(samples, "cachetap_capture_malformed_total", reason="not_ip") == 1
    assert value(samples, "cachetap_capture_requests_total", decision="count", reason="") == 3
    assert value(samples, "cachetap_capture_requests_total", decision="ignore", reason="extension") == 1
    assert value(samples, "cachetap_capture_sightings_sent_total") == 3
    assert value(samples, "cachetap_capture_sightings_dropped_total", where="buffer") == 0
    # analyze (a prefork pool process of the worker)
    assert value(samples, "cachetap_analyze_sightings_total", outcome="counted") == 3
    assert value(samples, "cachetap_analyze_admitted_total") == 2
    assert value(samples, "cachetap_analyze_rejected_total", reason="too_small") == 1
    assert value(samples, "cachetap_analyze_missed_bytes_total") == 0  # each object's one GET came before its probe
    # download (threads): one published, one failed for good, none running (the worker is alive)
    assert value(samples, "cachetap_download_bytes_total") == SIZE
    assert value(samples, "cachetap_download_duration_seconds_count") == 1
    assert value(samples, "cachetap_download_failures_total", reason="content_md5_mismatch", outcome="gave_up") == 1
    assert samples[("cachetap_download_active", ())] == 0
    # store: measured by the quota pass, then one purge
    assert value(store, "cachetap_store_objects") == 1 and value(store, "cachetap_store_bytes") == SIZE
    assert value(store, "cachetap_store_quota_bytes") == 0 and value(store, "cachetap_store_free_bytes") > 0
    assert value(store, "cachetap_store_evictions_total", reason="purge") == 0
    assert value(samples, "cachetap_store_evictions_total", reason="purge") == 1
    # serve: the two GETs above (/healthz answers 200 too)
    assert value(samples, "cachetap_serve_requests_total", status="206") == 1
    assert value(samples, "cachetap_serve_body_bytes_total") == SIZE + 1000

    assert value(samples, "cachetap_serve_fallbacks_total", reason="not_servable") == 1
    # the live capture, while it ran: the one ready key in its index, every refusal reason at 0
    assert value(live, "cachetap_capture_index_keys") == 1
    assert value(live, "cachetap_capture_not_redirected_total", reason="loop") == 0

    # Every metric the Grafana dashboard queries exists in this real exposition.
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for expr in dashboard_queries(dashboard) for name in METRIC_NAME.findall(expr)}
    exposed = {name for name, _labels in [*samples, *live]}
    assert len(queried) >= 15
    assert queried <= exposed, sorted(queried - exposed)


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


class LiveCapture:
    """`cachetap capture -i lo` in redirect mode, listening for GETs on a port nothing uses."""

    def __init__(self, settings) -> None:
        self.env = {**cli_env(settings), "CACHETAP_INTERFACE": "lo", "CACHETAP_MODE": "redirect",
                    "CACHETAP_HTTP_PORTS": json.dumps([free_port()])}

    def __enter__(self) -> LiveCapture:
        self.process = subprocess.Popen([sys.executable, "-m", "cachetap", "capture"], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.send_signal(signal.SIGTERM)
        _out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err


class CacheServer:
    """`cachetap serve` on the settings' port, as a cache node runs it; its base URL while running."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def __enter__(self) -> str:
        self.process = subprocess.Popen([sys.executable, "-m", "cachetap", "serve"], env=cli_env(self.settings),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{self.settings.serve_port}"
        wait_for(lambda: _healthy(base), "the cache server", timeout=60)
        return base

    def __exit__(self, *exc_info) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
