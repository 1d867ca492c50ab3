"""The cache server's access log through the real `cachetap serve` process: one Squid-native line per
answer, reopened on SIGUSR1 after a rotation, a path setting and an off switch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import httpx

from cachetap.core.keys import cache_key
from cachetap.core.types import Sighting
from cachetap.core.urls import object_url
from cachetap.settings import load_settings
from cachetap.store.blobs import BlobStore
from cachetap.store.catalog import open_catalog
from cachetap.testing.waiting import free_port, wait_for
from cachetap.testing.entries import walk

CACHETAP = str(Path(sys.executable).with_name("cachetap"))
URL = "http://files.test/big.iso"
DATA = os.urandom(300_000)


def stored(cache_dir: Path, url: str = URL, data: bytes = DATA, etag: str | None = None,
           expires_at: float | None = None) -> str:
    """One ready object in a real catalog and blob store; returns its key."""
    settings = load_settings(cache_dir=cache_dir)
    catalog, blobs = open_catalog(settings.effective_database_url), BlobStore(cache_dir)
    key, now = cache_key(url, {}), time.time()
    catalog.record_sightings([Sighting(ts=now, client="10.0.0.7", client_port=5, server="192.0.2.1", server_port=80,
                                       method="GET", host="files.test", url=url, key=key, target="/big.iso")],
                             86_400, now)
    temp = blobs.new_temp_name(key)
    temp.write_bytes(data)
    digest = blake3.blake3(data).hexdigest()
    blobs.publish(temp, digest)
    walk(catalog, key, "ready", blob=digest, size=len(data), stored_size=len(data), published_at=now,
         expires_at=now + 3600 if expires_at is None else expires_at, etag=etag,
         content_type="application/x-iso9660-image")
    return key


def serve(cache_dir: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    full.update(CACHETAP_CACHE_DIR=str(cache_dir), CACHETAP_SERVE_HOST="127.0.0.1", CACHETAP_SERVE_PORT=str(port), **env)
    proc = subprocess.Popen([CACHETAP, "serve"], env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    wait_for(up, "the cache server", timeout=60, step=0.2)
    return proc, base


def test_one_squid_line_per_answer_reopened_on_usr1(tmp_path):
    cache_dir = tmp_path / "cache"
    key = stored(cache_dir)
    log_path = tmp_path / "logs" / "access.log"
    proc, base = serve(cache_dir, CACHETAP_ACCESS_LOG=str(log_path))
    try:
        url = object_url(base, key, "big.iso")
        with httpx.Client() as client:
            assert client.get(url).content == DATA
            assert client.get(url, headers={"Range": "bytes=0-99"}).status_code == 206
            etag = client.head(url).headers["etag"]
            assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
            gone = "http://files.test/gone.iso"  # an unsigned origin hint is no hint: 404
            assert client.get(object_url(base, cache_key(gone, {}), "gone.iso", gone)).status_code == 404
            client.get(f"{base}/healthz")  # health checks are not logged
        wait_for(lambda: len(log_path.read_text().splitlines()) >= 5, "five access-log lines", timeout=10)
        lines = log_path.read_text().splitlines()
        fields = [line.split() for line in lines]
        assert [f[3] for f in fields] == ["TCP_HIT/200", "TCP_HIT/206", "TCP_HIT/200", "TCP_IMS_HIT/304", "TCP_MISS/404"]
        assert fields[0][2] == "127.0.0.1" and int(fields[0][4]) > len(DATA) and fields[0][5] == "GET"
        assert fields[0][6] == URL and fields[0][9] == "application/x-iso9660-image"
        assert fields[2][5] == "HEAD"
        assert fields[4][6].startswith(f"/c/{cache_key('http://files.test/gone.iso', {})}/gone.iso")
        assert fields[4][10] == "not_servable"
        assert oct(log_path.stat().st_mode & 0o777) == "0o640"
        # logrotate: move the file, signal, and the next line goes to a new file
        log_path.rename(log_path.with_suffix(".log.1"))
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert proc.poll() is None
        httpx.get(url, headers={"Range": "bytes=0-9"})
        assert wait_for(lambda: log_path.exists() and "TCP_HIT/206" in log_path.read_text(), "the reopened log", timeout=10)
        assert len(log_path.with_suffix(".log.1").read_text().splitlines()) == 5
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_access_log_is_under_cache_dir_by_default_and_can_be_switched_off(tmp_path):
    for setting, expected in ((None, tmp_path / "c1" / "access.log"), ("off", None)):
        cache_dir = tmp_path / ("c1" if setting is None else "c2")
        key = stored(cache_dir)
        proc, base = serve(cache_dir, **({"CACHETAP_ACCESS_LOG": setting} if setting else {}))
        try:
            httpx.get(object_url(base, key, "big.iso"), headers={"Range": "bytes=0-9"})
            time.sleep(0.3)
        finally:
            proc.terminate()
            proc.wait(30)
        if expected is None:
            assert not any(p.name.endswith(".log") and "access" in p.name for p in cache_dir.rglob("*"))
        else:
            assert "TCP_HIT/206" in expected.read_text()


def test_a_stale_object_the_origin_confirms_is_logged_refresh_hit_once_then_hit(tmp_path):
    """Squid's TCP_REFRESH_HIT: the object went stale, the origin answered our conditional request with
    304, and the first answer from the cache after that says so; the request that found it stale was
    sent to the origin (TCP_MISS stale). Real origin, real revalidation, the real `cachetap serve`."""
    from cachetap.fetch.resolver import Resolver
    from cachetap.tasks.housekeeping import revalidate_entry
    from cachetap.testing import LOOPBACK_NETWORKS
    from cachetap.testing.origin import Origin, Resource

    cache_dir, log_path = tmp_path / "cache", tmp_path / "access.log"
    with Origin() as origin:
        origin.add("/big.iso", Resource(size=300_000, content_type="application/x-iso9660-image"))
        url = origin.url("/big.iso")
        at_origin = httpx.get(url)
        key = stored(cache_dir, url=url, data=at_origin.content, etag=at_origin.headers["etag"],
                     expires_at=time.time() - 60)
        settings = load_settings(cache_dir=cache_dir, fetch_allow_networks=LOOPBACK_NETWORKS)
        catalog = open_catalog(settings.effective_database_url)
        proc, base = serve(cache_dir, CACHETAP_ACCESS_LOG=str(log_path))
        try:
            served = object_url(base, key, "big.iso")
            with httpx.Client() as client:
                assert client.get(served).status_code == 302  # stale: back to the origin
                outcome = revalidate_entry(catalog, BlobStore(cache_dir), Resolver.from_settings(settings), settings,
                                           catalog.get(key), time.time())
                assert outcome == "fresh" and origin.stats("/big.iso").statuses[304] == 1
                time.sleep(1.2)  # the server caches catalog rows for a second
                for _ in range(3):
                    assert client.get(served).content == at_origin.content
                assert client.get(served, headers={"Range": "bytes=0-9"}).status_code == 206
            wait_for(lambda: len(log_path.read_text().splitlines()) >= 5, "five access-log lines", timeout=10)
        finally:
            proc.terminate()
            proc.wait(30)
    print(log_path.read_text())
    fields = [line.split() for line in log_path.read_text().splitlines()]
    assert [f[3] for f in fields] == ["TCP_MISS/302", "TCP_REFRESH_HIT/200", "TCP_HIT/200", "TCP_HIT/200",
                                      "TCP_HIT/206"], fields
    assert fields[0][10] == "stale" and fields[0][6] == url
    assert all(f[6] == url for f in fields[1:])
    assert catalog.get(key).refreshed_at is None  # taken by the one answer logged for it
