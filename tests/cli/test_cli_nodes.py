"""`cachetap nodes`: a real cache server registers itself, is listed while it runs, leaves when stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cachetap.testing.waiting import free_port, wait_for

CACHETAP = Path(sys.executable).with_name("cachetap")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CACHETAP), *args], capture_output=True, text=True, env=env, timeout=120)


def listed(env: dict[str, str], *flags: str) -> list[dict]:
    done = run_cli(env, "nodes", "--json", *flags)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_serve_registers_its_node_and_leaves_on_stop(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update({"CACHETAP_CACHE_DIR": str(tmp_path / "cache"), "CACHETAP_NODE_NAME": "cache-one",
                "CACHETAP_NODE_HEARTBEAT_INTERVAL": "0.5", "CACHETAP_SERVE_HOST": "127.0.0.2",
                "CACHETAP_SERVE_PORT": str(port), "CACHETAP_RUN_AS_USER": ""})
    assert run_cli(env, "nodes").stdout.strip() == "no live nodes"
    server = subprocess.Popen([str(CACHETAP), "serve", "--quiet"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        [node] = wait_for(lambda: listed(env), "the cache server's heartbeat", timeout=60)
        assert node["name"] == "cache-one" and node["live"] and node["roles"] == ["cache"]
        assert node["public_url"] == f"http://127.0.0.2:{port}"
        assert node["capacity"] > 0 and node["disks"][0]["path"] == str(tmp_path / "cache")
        table = run_cli(env, "nodes").stdout
        assert "cache-one" in table and f"http://127.0.0.2:{port}" in table
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert listed(env) == []  # left at once, not after the liveness window
    [gone] = listed(env, "--all")
    assert gone["name"] == "cache-one" and not gone["live"]
    assert "forgot node cache-one" in run_cli(env, "nodes", "--forget", "cache-one").stdout
    assert listed(env, "--all") == []
