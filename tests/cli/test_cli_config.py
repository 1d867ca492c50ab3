"""`cachetap config show` through the real console script."""

import os
import subprocess
import sys
import tomllib

import pytest


def run_cli(*args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "cachetap", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_config_show_prints_effective_settings_masked(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('broker_url = "amqp://guest:hunter2@127.0.0.1//"\nadmission_threshold = 4\n')
    result = run_cli("--config", str(cfg), "config", "show",
                     env_extra={"CACHETAP_CACHE_DIR": str(tmp_path), "CACHETAP_MODE": "redirect"})
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["broker_url"] == "amqp://guest:***@127.0.0.1//"
    assert shown["admission_threshold"] == 4
    assert shown["mode"] == "redirect"
    assert shown["cache_dir"] == str(tmp_path)
    assert "hunter2" not in result.stdout
    assert "# interface is unset" in result.stdout


@pytest.mark.parametrize("content, key", [("mode = 5", "mode"), ("batch_interval = 0", "batch_interval")])
def test_invalid_config_fails_at_start_naming_the_key(tmp_path, content, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    result = run_cli("--config", str(cfg), "config", "show")
    assert result.returncode != 0
    assert key in result.stderr
    assert "Traceback" not in result.stderr
