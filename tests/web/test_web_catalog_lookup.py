"""CatalogLookup on a real SQLite catalog and blob store, served to curl."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import blake3
import pytest

from cachetap.core.types import Sighting
from cachetap.store.blobs import BlobStore
from cachetap.store.catalog import open_catalog
from cachetap.web.lookup import CatalogLookup
from cachetap.web.server import CacheServer
from cachetap.core.urls import object_path
from cachetap.testing.entries import walk

URL = "http://example.com/files/Ubuntu Café.iso"
KEY = hashlib.sha256(URL.encode()).hexdigest()[:32]
DATA = bytes(range(256)) * 4000


@pytest.fixture
def stored(tmp_path: Path):
    catalog, blobs = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}"), BlobStore(tmp_path / "cache")
    now = time.time()
    catalog.record_sightings([Sighting(ts=now, client="10.0.0.7", client_port=5, server="192.0.2.1",
                                       server_port=80, method="GET", host="example.com", url=URL, key=KEY,
                                       target="/files/Ubuntu%20Caf%C3%A9.iso")], 86_400, now)
    temp = blobs.new_temp_name(KEY)
    temp.write_bytes(DATA)
    digest = blake3.blake3(DATA).hexdigest()
    blobs.publish(temp, digest)
    return catalog, blobs, digest


def curl(*args: str) -> list[str]:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", *args],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_only_ready_unexpired_entries_with_their_blob_are_served(stored):
    catalog, blobs, digest = stored
    lookup = CatalogLookup(catalog, blobs, ttl=0.0)  # no caching: every request sees the catalog
    with CacheServer(lookup) as server:
        url = server.base_url + object_path(KEY, "Ubuntu Café.iso")
        assert curl(url) == ["302", "http://example.com/files/Ubuntu%20Caf%C3%A9.iso"]  # still counting
        walk(catalog, KEY, "ready", blob=digest, size=len(DATA), stored_size=len(DATA), etag='"v1"',
             content_type="application/x-iso9660-image", last_modified="Tue, 14 Nov 2023 22:13:20 GMT",
             filename="Ubuntu Café.iso", published_at=time.time())
        head = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", url], capture_output=True,
                              text=True, check=True).stdout
        assert head.startswith("HTTP/1.1 200")
        assert 'ETag: "v1"' in head and "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT" in head
        assert "filename*=UTF-8''Ubuntu%20Caf%C3%A9.iso" in head
        assert curl("-H", 'If-None-Match: "v1"', url) == ["304"]
        catalog.set_fields(KEY, ["ready"], expires_at=time.time() - 1)
        assert curl(url)[0] == "302"
        catalog.set_fields(KEY, ["ready"], expires_at=None)
        assert curl(url) == ["200"]
        blobs.path(digest).write_bytes(DATA[:-1])  # corrupt: size differs from the catalog's
        assert curl(url)[0] == "302"
        blobs.remove(digest)
        assert curl(url)[0] == "302"


def test_hits_are_written_in_batches(stored):
    catalog, blobs, digest = stored
    walk(catalog, KEY, "ready", blob=digest, size=len(DATA), filename="a.iso")
    before = catalog.get(KEY).hits
    lookup = CatalogLookup(catalog, blobs, ttl=60.0, flush_interval=3600.0)
    with CacheServer(lookup) as server:
        url = server.base_url + object_path(KEY, "a.iso")
        for _ in range(5):
            assert curl(url) == ["200"]
        assert catalog.get(KEY).hits == before  # nothing written per request
        lookup.close()
    assert catalog.get(KEY).hits == before + 5
