"""`cachetap prefetch` and `cachetap status` as subprocesses, with a real download worker and origin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cachetap.settings import load_settings
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.store.blobs import BlobStore, file_digest
from cachetap.testing.origin import Origin, Resource
from cachetap.testing.workers import CeleryWorker, settings_env

MiB = 1 << 20
WAIT = 240


@pytest.fixture
def origin():
    with Origin() as o:
        yield o


def make_settings(tmp_path: Path):
    return load_settings(cache_dir=tmp_path / "cache", resolve_overrides={"files.test": ["127.0.0.1"]},
                         fetch_allow_networks=LOOPBACK_NETWORKS,
                         min_size=MiB, download_retries=1, download_retry_wait=0, download_split=4,
                         download_connections_per_server=4)


def cachetap(settings, *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(settings_env(settings))
    return subprocess.run([sys.executable, "-m", "cachetap", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_prefetch_shows_progress_until_ready_and_status_reports_it(tmp_path, origin):
    origin.add("/tool.bin", Resource(size=3 * MiB, rate=500_000))  # a few seconds: progress shows
    settings = make_settings(tmp_path)
    url = f"http://files.test:{origin.port}/tool.bin"  # .bin: prefetch skips the extension rule anyway
    with CeleryWorker(settings, ["download"]) as worker:
        done = cachetap(settings, "prefetch", url)
        assert done.returncode == 0, done.stderr + worker.log_text()[-3000:]
        task_id = done.stdout.splitlines()[0].strip()
        expected = origin.expected_digest("/tool.bin")
        assert done.stdout.splitlines()[-1].startswith(f"ready ") and expected in done.stdout
        assert "tool.bin" in done.stderr  # the progress bar's label
        status = cachetap(settings, "status", task_id, "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["state"] == "SUCCESS" and report["result"]["digest"] == expected
        plain = cachetap(settings, "status", task_id)
        assert plain.stdout.startswith(f"{task_id}: SUCCESS")
    assert file_digest(BlobStore(settings.cache_dir).path(expected)) == expected
    overall = cachetap(settings, "status")
    assert overall.returncode == 0 and "ready 1" in overall.stdout
    unknown = cachetap(settings, "status", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1 and "00000000-0000-0000-0000-000000000000: unknown" in unknown.stderr
    again = cachetap(settings, "prefetch", url)
    assert again.returncode == 0 and "already ready" in again.stderr


def test_detached_prefetch_is_listed_in_progress_and_failures_name_the_reason(tmp_path, origin):
    origin.add("/slow.iso", Resource(size=4 * MiB, rate=100_000))  # ~10 s over 4 connections
    origin.add("/tiny.iso", Resource(size=1000))
    settings = make_settings(tmp_path)
    url = f"http://files.test:{origin.port}/slow.iso"
    with CeleryWorker(settings, ["download"]) as worker:
        detached = cachetap(settings, "prefetch", "--detach", url)
        assert detached.returncode == 0, detached.stderr
        task_id = detached.stdout.strip()
        deadline = time.monotonic() + WAIT
        while True:
            report = json.loads(cachetap(settings, "status", "--json").stdout)
            moving = [a for a in report["active"] if a["state"] == "downloading" and a["bytes_done"] > 0]
            if moving:
                break
            assert time.monotonic() < deadline, worker.log_text()[-3000:]
            time.sleep(0.5)
        assert moving[0]["url"] == url and moving[0]["size"] == 4 * MiB
        assert report["counts"]["downloading"] == 1
        # Following an entry already downloading shows its progress to the end.
        follow = cachetap(settings, "prefetch", url)
        assert follow.returncode == 0 and "already downloading" in follow.stderr, follow.stderr
        assert cachetap(settings, "status", task_id).stdout.startswith(f"{task_id}: SUCCESS")
    rejected = cachetap(settings, "prefetch", f"http://files.test:{origin.port}/tiny.iso")
    assert rejected.returncode == 1 and "too_small" in rejected.stderr and "below min_size" in rejected.stderr
    missing = cachetap(settings, "prefetch", f"http://files.test:{origin.port}/missing.iso")
    assert missing.returncode == 1 and "probe_status_404" in missing.stderr
    bad = cachetap(settings, "prefetch", "ftp://files.test/x.iso")
    assert bad.returncode == 1 and "not a plain http:// URL" in bad.stderr
