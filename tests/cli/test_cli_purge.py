"""`cachetap purge` and `cachetap cleanup` through the real console script on a real catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from cachetap.cli.catalog_cmds import open_catalog
from cachetap.core.keys import cache_key, canonical_url
from cachetap.core.types import Sighting
from cachetap.settings import load_settings
from cachetap.store.blobs import BlobStore
from cachetap.testing.entries import walk

CACHETAP = Path(sys.executable).with_name("cachetap")
STRIP = {"*.cdn.test": ["token"]}


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    full.update(env)
    return subprocess.run([str(CACHETAP), *args], capture_output=True, text=True, env=full, timeout=120)


@pytest.fixture
def cache(tmp_path: Path, catalog_url: str):
    env = {"CACHETAP_CACHE_DIR": str(tmp_path / "cache"), "CACHETAP_DATABASE_URL": catalog_url,
           "CACHETAP_STRIP_QUERY_PARAMS": json.dumps(STRIP), "CACHETAP_MIN_FREE_BYTES": "0",
           "CACHETAP_LOG_LEVEL": "WARNING"}
    settings = load_settings(cache_dir=tmp_path / "cache", database_url=catalog_url, strip_query_params=STRIP)
    catalog = open_catalog(settings)
    yield env, catalog, BlobStore(settings.cache_dir)
    catalog.engine.dispose()


def add_ready(catalog, blobs: BlobStore, url: str, content: bytes, hits: int = 2,
              last_hit: float | None = None) -> tuple[str, str]:
    url = canonical_url(url, None, 80)
    key = cache_key(url, STRIP)
    ts = time.time() if last_hit is None else last_hit
    s = Sighting(ts=ts, client="10.0.0.5", client_port=4000, server="127.0.0.1", server_port=80, method="GET",
                 host="x", url=url, key=key, target="/")
    catalog.record_sightings([s] * hits, window=86_400, now=ts)
    digest = blake3.blake3(content).hexdigest()
    temp = blobs.new_temp_name(key)
    temp.write_bytes(content)
    blobs.publish(temp, digest)
    walk(catalog, key, "ready", blob=digest, size=len(content), stored_size=len(content), published_at=ts,
         expires_at=time.time() + 86_400)
    return key, digest


def test_purge_by_url_uses_the_canonical_form_and_strip_rules(cache):
    env, catalog, blobs = cache
    key, digest = add_ready(catalog, blobs, "http://dl.cdn.test/pkg/a.iso?token=abc", b"a" * 1234)
    other, other_digest = add_ready(catalog, blobs, "http://dl.cdn.test/pkg/b.iso", b"b" * 10)

    # Another token, upper-case host, default port and a dot-segment: the same object.
    result = run_cli(env, "purge", "http://DL.cdn.test:80/pkg/x/../a.iso?token=zzz")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"removed {key} (ready, 1234 bytes, file deleted): "
                                     "http://dl.cdn.test/pkg/a.iso?token=abc")
    assert catalog.get(key) is None and not blobs.exists(digest)
    assert catalog.get(other).state == "ready" and blobs.exists(other_digest)

    again = run_cli(env, "purge", "http://dl.cdn.test/pkg/a.iso")
    assert again.returncode == 1
    assert f"{key}: not in the cache (http://dl.cdn.test/pkg/a.iso)" in again.stderr


def test_purge_by_key_and_shared_files(cache):
    env, catalog, blobs = cache
    one, digest = add_ready(catalog, blobs, "http://files.test/one.iso", b"same")
    two, _ = add_ready(catalog, blobs, "http://files.test/two.iso", b"same")
    result = run_cli(env, "purge", one.upper())
    assert result.returncode == 0, result.stderr
    assert "file kept: another entry has the same content" in result.stdout
    assert blobs.exists(digest) and catalog.get(one) is None
    result = run_cli(env, "purge", two)
    assert result.returncode == 0 and "file deleted" in result.stdout
    assert not blobs.exists(digest)


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("target", ["0" * 32, "ftp://files.test/a.iso", "not a url", "../../etc/passwd"])
def test_purge_of_unknown_or_invalid_targets_fails_cleanly(cache, target):
    env, _catalog, _blobs = cache
    result = run_cli(env, "purge", target)
    assert result.returncode in (1, 2)  # 1: unknown key; 2: neither key nor http URL (usage error)
    assert "Traceback" not in result.stderr
    assert ("not in the cache" if result.returncode == 1 else "neither a cache key") in result.stderr


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_cleanup_runs_the_four_passes_once(cache):
    env, catalog, blobs = cache
    now = time.time()
    cold, cold_sha = add_ready(catalog, blobs, "http://files.test/cold.iso", b"c" * 10, hits=1,
                               last_hit=now - 30 * 86_400)
    warm, _ = add_ready(catalog, blobs, "http://files.test/warm.iso", b"w" * 10, hits=5)
    (blobs.temp_dir / "stale.part").write_bytes(b"x")
    os.utime(blobs.temp_dir / "stale.part", (now - 2 * 86_400, now - 2 * 86_400))

    result = run_cli(env, "cleanup", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["cleanup"] == {"candidates": 1, "evicted": 1}
    assert summary["reconcile"]["temp_files"] == 1
    assert summary["revalidate"]["checked"] == 0 and summary["quota"]["evicted"] == 0
    assert catalog.get(cold) is None and not blobs.exists(cold_sha)
    assert catalog.get(warm).state == "ready"

    plain = run_cli(env, "cleanup")
    assert plain.returncode == 0 and "cleanup: candidates 0, evicted 0" in plain.stdout
