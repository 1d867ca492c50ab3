"""The reload handshake in one process, with real files: a stamp generation, answers, dead processes."""

from __future__ import annotations

import json
import os

from cachetap.reloading import LiveSettings, changed_settings, request_reload, running_processes
from cachetap.settings import load_settings


def settings_from(path, text, monkeypatch):
    path.write_text(text)
    monkeypatch.setenv("CACHETAP_CONFIG", str(path))
    return load_settings()


def test_changed_settings_splits_live_from_restart_ones(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    before = settings_from(config, f'cache_dir = "{tmp_path}"\n', monkeypatch)
    after = settings_from(config, f'cache_dir = "{tmp_path}"\nmin_size = "2MiB"\nserve_port = 9000\n'
                                  'redirect_hosts = ["a.example"]\n', monkeypatch)
    assert changed_settings(before, after) == (["min_size", "redirect_hosts"], ["serve_port"])
    assert changed_settings(after, after) == ([], [])


def test_a_watching_process_applies_live_settings_and_answers(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    live = LiveSettings(settings_from(config, f'cache_dir = "{tmp_path}"\n', monkeypatch), check_every=0.05)
    seen = []
    live.watch("test", seen.append)
    try:
        assert running_processes(tmp_path) == {os.getpid(): "test"}
        config.write_text(f'cache_dir = "{tmp_path}"\nclient_subnets = ["10.1.0.0/16"]\nserve_port = 9000\n')
        outcome = request_reload(tmp_path)
        assert (outcome.live, outcome.restart, outcome.errors, outcome.silent) == \
            (["client_subnets"], ["serve_port"], {}, {})
        assert [str(n) for n in live.settings.client_subnets] == ["10.1.0.0/16"]
        assert live.settings.serve_port == 8642  # only a restart brings it
        assert seen == [live.settings]
    finally:
        live.stop()


def test_a_file_broken_after_reload_checked_it_keeps_the_running_settings(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    live = LiveSettings(settings_from(config, f'cache_dir = "{tmp_path}"\n', monkeypatch), check_every=0.05)
    live.watch("test")
    try:
        before = live.settings
        config.write_text(f'cache_dir = "{tmp_path}"\nclient_subnets = ["10.1.0.300/16"]\n')
        outcome = request_reload(tmp_path)
        assert live.settings is before
        assert "client_subnets" in outcome.errors[os.getpid()]
    finally:
        live.stop()


def test_answers_of_dead_processes_are_forgotten_and_silent_ones_named(tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    (folder / f"{gone}.json").write_text(json.dumps({"role": "gone", "generation": None}))
    (folder / f"{os.getpid()}.json").write_text(json.dumps({"role": "stuck", "generation": None}))
    assert running_processes(tmp_path) == {os.getpid(): "stuck"}
    assert not (folder / f"{gone}.json").exists()
    outcome = request_reload(tmp_path, timeout=0.2)
    assert outcome.silent == {os.getpid(): "stuck"} and outcome.answered == {}
