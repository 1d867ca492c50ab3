"""`cachetap deploy systemd` through the real console script; the units checked by systemd itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CACHETAP = str(Path(sys.executable).with_name("cachetap"))


def deploy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env["CACHETAP_CACHE_DIR"] = str(tmp_path / "cache")
    return subprocess.run([CACHETAP, "deploy", "systemd", *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian package systemd)")
def test_units_pass_systemd_analyze_verify_without_a_word_on_stderr(tmp_path):
    done = deploy(tmp_path, "--prefix", str(tmp_path / "root"), "--user", "cachetap-svc")
    assert done.returncode == 0, done.stderr
    units = sorted((tmp_path / "root" / "etc" / "systemd" / "system").iterdir())
    assert [u.name for u in units] == ["cachetap-beat.service", "cachetap-capture.service", "cachetap-serve.service",
                                       "cachetap-workers.service", "cachetap.target"]
    # verify exits 0 on unknown keys and only complains on stderr: any output there is a failure.
    check = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                           timeout=120, cwd=units[0].parent)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    capture = (units[1]).read_text()
    assert "AmbientCapabilities=CAP_NET_RAW CAP_SYS_NICE" in capture and "User=cachetap-svc" in capture
    others = "".join(u.read_text() for u in units if u.name != "cachetap-capture.service")
    assert "Capabilit" not in others and others.count("NoNewPrivileges=yes") == 3
    workers = units[3].read_text()
    assert "multi start $CELERYD_NODES" in workers and "EnvironmentFile=/etc/cachetap/cachetap.env" in workers
    # systemctl reload applies live settings; it never restarts a worker (what `multi restart` would do).
    assert "\nExecReload=" + CACHETAP.rsplit("/", 1)[0] + "/cachetap reload\n" in workers
    assert "multi restart" not in workers
    env = (tmp_path / "root" / "etc" / "cachetap" / "cachetap.env").read_text()
    assert "-P:ct-download threads" in env and 'CELERYD_NODES="ct-analyze ct-download ct-schedule"' in env
    assert f"CACHETAP_CACHE_DIR={tmp_path / 'cache'}" in env


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="needs logrotate")
def test_logrotate_snippet_parses_and_signals_the_log_writers(tmp_path):
    assert deploy(tmp_path, "--prefix", str(tmp_path / "root"), "--user", "root").returncode == 0
    snippet = tmp_path / "root" / "etc" / "logrotate.d" / "cachetap"
    text = snippet.read_text()
    assert "systemctl kill --signal=USR1 cachetap-serve.service cachetap-capture.service" in text
    assert f"{tmp_path / 'cache'}/access.log" in text
    check = subprocess.run(["logrotate", "--debug", "--state", str(tmp_path / "state"), str(snippet)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "error" not in check.stderr.lower(), check.stderr


def test_dry_run_prints_every_file_and_writes_nothing(tmp_path):
    done = deploy(tmp_path, "--dry-run", "--prefix", str(tmp_path / "root"))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "root").exists()
    for name in ("cachetap-workers.service", "cachetap-capture.service", "cachetap.target", "cachetap.env",
                 "logrotate.d/cachetap"):
        assert f"# --- /etc/" in done.stdout and name in done.stdout
    assert "User=cachetap" in done.stdout


def test_a_role_gets_only_its_units_and_workers_and_the_target_wants_just_those(tmp_path):
    done = deploy(tmp_path, "--prefix", str(tmp_path / "cache-node"), "--role", "cache")
    assert done.returncode == 0, done.stderr
    system = tmp_path / "cache-node" / "etc" / "systemd" / "system"
    assert sorted(u.name for u in system.iterdir()) == ["cachetap-serve.service", "cachetap-workers.service",
                                                        "cachetap.target"]
    assert "Wants=cachetap-workers.service cachetap-serve.service\n" in (system / "cachetap.target").read_text()
    env = (tmp_path / "cache-node" / "etc" / "cachetap" / "cachetap.env").read_text()
    assert 'CELERYD_NODES="ct-download"' in env and "-P:ct-download threads" in env and "ct-analyze" not in env

    done = deploy(tmp_path, "--prefix", str(tmp_path / "edge"), "--role", "capture", "--role", "control")
    assert done.returncode == 0, done.stderr
    system = tmp_path / "edge" / "etc" / "systemd" / "system"
    assert sorted(u.name for u in system.iterdir()) == ["cachetap-beat.service", "cachetap-capture.service",
                                                        "cachetap-workers.service", "cachetap.target"]
    env = (tmp_path / "edge" / "etc" / "cachetap" / "cachetap.env").read_text()
    assert 'CELERYD_NODES="ct-analyze ct-schedule"' in env and "ct-download" not in env

    refused = deploy(tmp_path, "--dry-run", "--role", "gateway")
    assert refused.returncode == 2 and "'gateway' is not one of" in refused.stderr and "Traceback" not in refused.stderr
