"""End to end on embedded defaults: a capture with repeated GETs -> `cachetap replay` -> real analyze and
download workers -> `cachetap ls` shows the entry ready -> `cachetap serve` answers curl byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from cachetap.settings import load_settings
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.origin import Origin, Resource, generated_chunks
from cachetap.testing.pcaps import http_get_packets, write_capture
from cachetap.testing.waiting import free_port
from cachetap.testing.workers import CeleryWorker, settings_env
from cachetap.core.urls import object_path

MiB = 1 << 20
SIZE = 3 * MiB + 999
WAIT = 240


def cli_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(settings_env(settings))
    return env


def cachetap(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cachetap", *args], env=cli_env(settings),
                          capture_output=True, text=True, timeout=WAIT)


def curl(*args: str) -> bytes:
    return subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, check=True, timeout=120).stdout


def test_replayed_requests_are_cached_and_served_byte_identical(tmp_path):
    with Origin() as origin:
        origin.add("/pub/image.iso", Resource(size=SIZE, content_type="application/x-iso9660-image"))
        settings = load_settings(cache_dir=tmp_path / "cache", http_ports=[origin.port], admission_threshold=1,
                                 resolve_overrides={"files.test": ["127.0.0.1"]},
                                 fetch_allow_networks=LOOPBACK_NETWORKS, min_size=MiB,
                                 download_split=4, download_connections_per_server=4, serve_host="127.0.0.1",
                                 serve_port=free_port())
        # Two clients ask for the file; the packets went to 127.0.0.1, which is files.test's own
        # address, so the poisoning guard counts them.
        now = time.time()
        packets = []
        for n, client in enumerate(("10.0.0.5", "10.0.0.6")):
            packets += http_get_packets(client, "127.0.0.1", f"files.test:{origin.port}", "/pub/image.iso",
                                        server_port=origin.port, client_port=40000 + n, start=now + n)
        capture = write_capture(tmp_path / "two-gets.pcap", packets)
        with CeleryWorker(settings, ["analyze"], name="analyzer") as analyzer, \
                CeleryWorker(settings, ["download"], name="downloader") as downloader:
            replayed = cachetap(settings, "replay", "--quiet", str(capture))
            assert replayed.returncode == 0, replayed.stderr
            summary = json.loads(replayed.stdout.splitlines()[-1])["summary"]
            assert summary["decisions"] == {"count": 2} and summary["queued"]["sent_items"] == 2
            deadline = time.monotonic() + WAIT
            while True:
                listed = cachetap(settings, "ls", "--json")
                rows = [json.loads(line) for line in listed.stdout.splitlines()]
                if rows and rows[0]["state"] in ("ready", "failed", "rejected"):
                    break
                assert time.monotonic() < deadline, analyzer.log_text()[-2000:] + downloader.log_text()[-3000:]
                time.sleep(0.5)
        (row,) = rows
        assert row["state"] == "ready", row
        assert row["url"] == f"http://files.test:{origin.port}/pub/image.iso" and row["hits"] == 2
        assert row["blob"] == origin.expected_digest("/pub/image.iso")
        assert origin.stats("/pub/image.iso").hosts[0] == f"files.test:{origin.port}"  # our own probe
        # One download, not one per client: a single request for the whole object (aria2's other
        # connections ask for ranges). Body bytes would overcount: unthrottled loopback sockets take
        # megabytes the first connection then drops.
        whole_object_gets = [r for r in origin.stats("/pub/image.iso").ranges if r is None]
        assert len(whole_object_gets) == 1, origin.stats("/pub/image.iso")

    expected = b"".join(bytes(c) for c in generated_chunks("/pub/image.iso", 0, SIZE))
    server = subprocess.Popen([sys.executable, "-m", "cachetap", "serve"], env=cli_env(settings),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{settings.serve_port}"
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "cache server did not come up"
            time.sleep(0.2)
        url = base + object_path(row["key"], row["filename"])
        assert curl(url) == expected
        assert curl("-r", "123456-2345678", url) == expected[123456:2345679]
        assert curl("-r", "-1000", url) == expected[-1000:]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
