"""`cachetap config show` through the real console script."""

import json
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


def test_admin_token_shown_only_with_secrets_and_equal_to_the_file(tmp_path):
    env = {"CACHETAP_CACHE_DIR": str(tmp_path), "CACHETAP_RUN_AS_USER": ""}
    revealed = run_cli("config", "show", "--secrets", env_extra=env)
    assert revealed.returncode == 0, revealed.stderr
    token = tomllib.loads(revealed.stdout)["admin_token"]
    assert len(token) == 64
    assert (tmp_path / "admin_token").read_text() == token + "\n"  # first start made it, file and all
    plain = run_cli("config", "show", "--json", env_extra=env)
    assert plain.returncode == 0, plain.stderr
    assert token not in plain.stdout
    again = run_cli("config", "show", "--secrets", "--json", env_extra=env)
    assert json.loads(again.stdout)["admin_token"] == token


def test_configured_admin_token_masked_unless_secrets(tmp_path):
    env = {"CACHETAP_CACHE_DIR": str(tmp_path), "CACHETAP_RUN_AS_USER": "",
           "CACHETAP_ADMIN_TOKEN": "my-own-admin-token-42", "CACHETAP_BROKER_URL": "redis://:pw1@127.0.0.1/0"}
    plain = run_cli("config", "show", env_extra=env)
    assert plain.returncode == 0, plain.stderr
    assert "my-own-admin-token-42" not in plain.stdout and "pw1" not in plain.stdout
    assert tomllib.loads(plain.stdout)["admin_token"] == "***"
    revealed = tomllib.loads(run_cli("config", "show", "--secrets", env_extra=env).stdout)
    assert revealed["admin_token"] == "my-own-admin-token-42"
    assert revealed["broker_url"] == "redis://:pw1@127.0.0.1/0"


def test_weak_admin_token_refused_naming_the_setting(tmp_path):
    result = run_cli("config", "show", env_extra={"CACHETAP_CACHE_DIR": str(tmp_path), "CACHETAP_ADMIN_TOKEN": "short"})
    assert result.returncode != 0
    assert "admin_token" in result.stderr and "Traceback" not in result.stderr
