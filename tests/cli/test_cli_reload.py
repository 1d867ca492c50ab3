"""`cachetap reload` through the real console script against a real, running `cachetap serve` (two
forked workers): live settings change in every process without a restart, the others are named, a bad
file changes nothing. The capture's redirect scope and the workers' log level under a real
`cachetap run`: tests/test_redirect_netns.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

CACHETAP = str(Path(sys.executable).with_name("cachetap"))


def reload(config: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    return subprocess.run([CACHETAP, "-c", str(config), "reload"], env=env, capture_output=True, text=True,
                          timeout=60)


def write_config(path: Path, cache_dir: Path, **values: str) -> None:
    lines = [f'cache_dir = "{cache_dir}"', 'run_as_user = ""', *(f"{k} = {v}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def serving(tmp_path):
    """A real `cachetap serve --processes 2` on an ephemeral port; yields (config, cache_dir, process, log)."""
    cache_dir, config, log = tmp_path / "cache", tmp_path / "cachetap.toml", tmp_path / "serve.log"
    write_config(config, cache_dir, client_subnets='["10.0.0.0/8"]')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([CACHETAP, "-c", str(config), "serve", "--host", "127.0.0.1", "--port", "0",
                                 "--processes", "2"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list((cache_dir / "live").glob("*.json"))) < 3:  # the server and its two workers
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield config, cache_dir, proc, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_reload_applies_live_settings_in_every_process_and_names_the_rest(serving):
    config, cache_dir, proc, log = serving
    pids = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} | {proc.pid}
    assert "reloaded" not in log.read_text()  # WARNING by default: INFO lines are not written
    write_config(config, cache_dir, client_subnets='["192.168.0.0/16"]', log_level='"INFO"',
                 serve_max_connections="9999")
    done = reload(config)
    assert done.returncode == 0, done
    assert done.stdout.splitlines() == [
        "reloaded by 3 processes (serve)",
        "applied live: client_subnets, log_level",
        "restart needed for: serve_max_connections (restart `cachetap run`, or `systemctl restart cachetap.target`)",
    ], done.stdout
    assert done.stderr == ""
    # Each process logs at INFO now, so its own reload line shows.
    deadline = time.monotonic() + 5
    while log.read_text().count("reloaded: client_subnets, log_level") < 3:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    # Nothing restarted; the restart-only setting is named again until a restart brings it.
    again = reload(config)
    assert again.stdout.splitlines()[1:2] == ["applied live: nothing changed"], again.stdout
    assert "restart needed for: serve_max_connections" in again.stdout
    assert {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} | {proc.pid} == pids


def test_a_bad_file_is_refused_before_any_process_is_told(serving):
    config, cache_dir, proc, log = serving
    stamp = cache_dir / "reload.stamp"
    config.write_text(config.read_text().replace("10.0.0.0/8", "10.0.0.300/8") + 'log_level = "INFO"\n')
    bad = reload(config)
    assert bad.returncode == 1 and bad.stdout == "", bad
    err = bad.stderr.strip()
    assert "client_subnets" in err and str(config) in err and "Traceback" not in err, err
    assert len(err.splitlines()) <= 3, err
    assert not stamp.exists()
    time.sleep(1.5)  # one check interval: still nothing logged at INFO
    assert "reloaded" not in log.read_text()


def test_reload_with_nothing_running_says_so(tmp_path):
    config = tmp_path / "cachetap.toml"
    write_config(config, tmp_path / "cache")
    result = reload(config)
    assert result.returncode == 1 and result.stdout == "", result
    assert "no running cachetap process uses" in result.stderr and "-c FILE or CACHETAP_CONFIG" in result.stderr
    assert not (tmp_path / "cache" / "reload.stamp").exists()
