"""Attacks on the fetch guard with real packets: forged GETs replayed through `cachetap replay` into a
real analyze worker, aimed at a service that listens on loopback only (the real test origin)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cachetap.core.keys import cache_key, canonical_url
from cachetap.settings import load_settings
from cachetap.tasks.app import create_app
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.origin import Origin, Resource
from cachetap.testing.pcaps import http_get_packets, write_capture
from cachetap.testing.workers import CeleryWorker, settings_env

MiB = 1 << 20
WAIT = 120


def replay(settings, capture) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(settings_env(settings))
    done = subprocess.run([sys.executable, "-m", "cachetap", "replay", "--quiet", str(capture)], env=env,
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr


def forged_gets(dst_port: int, host: str, target: str, start: float) -> list:
    """Two clients asking for `target` with `Host: host`, sent to 127.0.0.1:dst_port."""
    packets = []
    for n, client in enumerate(("10.0.0.5", "10.0.0.6")):
        packets += http_get_packets(client, "127.0.0.1", host, target, server_port=dst_port,
                                    client_port=41000 + n, start=start + n)
    return packets


def key_of(host: str, target: str, port: int) -> str:
    return cache_key(canonical_url(target, host, port), {})


def wait_for_batches(worker: CeleryWorker, count: int) -> str:
    deadline = time.monotonic() + WAIT
    while worker.log_text().count("analyze batch:") < count:
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        time.sleep(0.2)
    return worker.log_text()


def test_forged_host_naming_a_loopback_service_is_never_fetched(tmp_path):
    """Seen failing on bb0220b: the HEAD probe (and the download) reached the loopback-only origin."""
    with Origin() as internal:
        internal.add("/secret.iso", Resource(size=2 * MiB))
        internal.add("/leak.iso", Resource(size=2 * MiB))
        host = f"127.0.0.1:{internal.port}"
        settings = load_settings(cache_dir=tmp_path / "cache", http_ports=[80, internal.port],
                                 admission_threshold=1, min_size=MiB, log_level="DEBUG")
        now = time.time() - 20  # in the past: hits later than the batch's clock are not counted
        # Sent to port 80 but naming the service's port in Host; and sent to the service's own port.
        packets = forged_gets(80, host, "/secret.iso", now) + forged_gets(internal.port, host, "/leak.iso", now + 5)
        capture = write_capture(tmp_path / "forged.pcap", packets)
        app = create_app(settings)
        with CeleryWorker(settings, ["analyze", "download"]) as worker:
            replay(settings, capture)
            leak = key_of(host, "/leak.iso", internal.port)
            deadline = time.monotonic() + WAIT
            while (entry := app.catalog.get(leak)) is None or entry.state in ("counting", "probing"):
                assert time.monotonic() < deadline, worker.log_text()[-3000:]
                time.sleep(0.2)
            log = wait_for_batches(worker, 1)  # the batch's summary is logged after its keys are settled
        assert "'port_mismatch': 2" in log, log[-3000:]
        assert app.catalog.get(key_of(host, "/secret.iso", 80)) is None
        assert (entry.state, "forbidden_address" in (entry.reason or "")) == ("failed", True), entry
        assert internal.stats("/secret.iso").methods == {}
        assert internal.stats("/leak.iso").methods == {}


def test_port_in_host_must_match_the_destination_port_even_for_allowed_networks(tmp_path):
    """Seen failing on bb0220b (without the setting: the probe reached the origin's port)."""
    with Origin() as internal:
        internal.add("/secret.iso", Resource(size=2 * MiB))
        settings = load_settings(cache_dir=tmp_path / "cache", log_level="INFO", http_ports=[80], admission_threshold=1,
                                 min_size=MiB, fetch_allow_networks=LOOPBACK_NETWORKS,
                                 resolve_overrides={"mirror.test": ["127.0.0.1"]})
        host = f"mirror.test:{internal.port}"
        capture = write_capture(tmp_path / "forged.pcap", forged_gets(80, host, "/secret.iso", time.time() - 20))
        with CeleryWorker(settings, ["analyze"]) as worker:
            replay(settings, capture)
            log = wait_for_batches(worker, 1)
        assert "'port_mismatch': 2" in log and "'counted': 0" in log, log[-3000:]
        assert create_app(settings).catalog.get(key_of(host, "/secret.iso", 80)) is None
        assert internal.stats("/secret.iso").methods == {}
