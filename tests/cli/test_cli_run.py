"""`cachetap run`: every process starts on embedded defaults and a SIGTERM stops them all."""

import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from cachetap.testing.waiting import free_port, wait_for


def test_run_starts_everything_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(CACHETAP_CACHE_DIR=str(tmp_path / "cache"), CACHETAP_SERVE_HOST="127.0.0.1",
               CACHETAP_SERVE_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "cachetap", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(healthy, "the cache server to answer", timeout=120, step=0.5)
        parent = psutil.Process(proc.pid)
        cmdlines = lambda: [" ".join(p.cmdline()) for p in parent.children(recursive=True)]  # noqa: E731
        wait_for(lambda: sum("worker" in c for c in cmdlines()) >= 3 and any(" beat" in c for c in cmdlines()),
                 "three workers and beat", timeout=120, step=0.5)
        children = parent.children(recursive=True)
        assert (tmp_path / "cache" / "catalog.sqlite").exists()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, output
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        assert "all stopped" in output
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_with_bad_config_fails_naming_the_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(CACHETAP_CACHE_DIR=str(tmp_path), CACHETAP_ADMISSION_WINDOW="-5")
    result = subprocess.run([sys.executable, "-m", "cachetap", "run"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "admission_window" in result.stderr and "Traceback" not in result.stderr
