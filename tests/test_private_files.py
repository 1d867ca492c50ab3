"""Files under cache_dir are private to the user running cachetap, and a foreign cache_dir is refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from cachetap.settings import load_settings
from cachetap.testing.workers import settings_env


def run(settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")} | settings_env(settings)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)


def modes(root) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_cache_dir_catalog_and_broker_are_readable_by_their_user_only(tmp_path):
    """Seen failing on bb0220b: cache_dir and the broker folders were 0755, the catalog 0644."""
    cache = tmp_path / "cache"
    settings = load_settings(cache_dir=cache)
    listed = run(settings, "-m", "cachetap", "ls")
    assert listed.returncode == 0, listed.stderr
    made = run(settings, "-c", "from cachetap.celery import app; app.send_task('cachetap.analyze.batch', args=[[]])")
    assert made.returncode == 0, made.stderr
    found = modes(cache)
    assert "catalog.sqlite" in found and "broker/queue" in found and "celery-results.sqlite" in found, found
    assert {name: mode for name, mode in found.items() if mode & 0o077} == {}


def test_cache_dir_owned_by_another_user_is_refused_with_one_line(tmp_path):
    """Seen failing on bb0220b: cachetap used (and wrote into) a cache_dir owned by nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chown(cache, 65534, 65534)
    settings = load_settings(cache_dir=cache)
    listed = run(settings, "-m", "cachetap", "ls")
    assert listed.returncode == 2
    assert listed.stderr.count("\n") == 1 and "is owned by nobody" in listed.stderr, listed.stderr
    assert "chown" in listed.stderr and list(cache.iterdir()) == []
