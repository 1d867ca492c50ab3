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


def test_disks_present_are_given_to_the_service_user_missing_ones_never_made(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the disks to another user")
    import pwd

    from cachetap.privileges import ServiceUser, give_disks

    nobody = pwd.getpwnam("nobody")
    user = ServiceUser("nobody", nobody.pw_uid, nobody.pw_gid)
    present, missing, unmounted = tmp_path / "disk1", tmp_path / "disk2", tmp_path / "disk3"
    (present / "blobs").mkdir(parents=True)
    unmounted.mkdir()
    settings = load_settings(cache_dir=tmp_path / "home", cache_dirs=[
        str(present), str(missing), {"path": str(unmounted), "require_mount": True}])
    assert give_disks(settings, user) == [present]
    assert os.stat(present).st_uid == os.stat(present / "blobs").st_uid == nobody.pw_uid
    assert stat.S_IMODE(os.stat(present).st_mode) == 0o700
    assert not missing.exists() and os.stat(unmounted).st_uid == 0
