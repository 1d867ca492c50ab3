"""Objects follow their key's owner: copied from a live holder's cache server without asking the
origin again (peer fill), downloaded again by the owner when the holder is gone.

Node node-a is a real cache server on 127.0.0.2 over its own directory; node-b is a real download
worker over another directory; both share one catalog (and so the node registry), as a cluster does."""

from __future__ import annotations

import time
from collections import Counter

import blake3

from cachetap.core.keys import cache_key
from cachetap.core.placement import members_from, owner
from cachetap.core.types import Sighting
from cachetap.store.blobs import BlobStore
from cachetap.store.nodes import Disk
from cachetap.tasks.app import create_app
from cachetap.tasks.rehome import rehome_requested
from cachetap.testing.origin import Resource, generated_chunks
from cachetap.testing.waiting import wait_for
from cachetap.testing.workers import CeleryWorker
from cachetap.web.lookup import CatalogLookup
from cachetap.web.server import CacheServer
from cachetap.testing.entries import walk

MiB = 1 << 20
SIZE = 2 * MiB + 99
NODES = {"node-a": 1 << 40, "node-b": 1 << 40}


def owned_by_b(port: int) -> tuple[str, str, str]:
    """A URL on the origin whose key node-b owns when both nodes are live (path, url, key)."""
    members = members_from(NODES)
    for i in range(200):
        path = f"/moved-{i}.iso"
        url = f"http://files.test:{port}{path}"
        if owner(cache_key(url, {}), members) == "node-b":
            return path, url, cache_key(url, {})
    raise AssertionError("no key owned by node-b in 200 tries")


def ready_on_a(catalog, blobs_a: BlobStore, url: str, key: str, content: bytes) -> str:
    now = time.time()
    catalog.record_sightings([Sighting(now, "10.0.0.5", 4000, "127.0.0.1", 80, "GET", "files.test", url, key, "/")],
                             window=86_400, now=now)
    digest = blake3.blake3(content).hexdigest()
    temp = blobs_a.new_temp_name(key)
    temp.write_bytes(content)
    blobs_a.publish(temp, digest)
    walk(catalog, key, "ready", blob=digest, size=len(content), stored_size=len(content), published_at=now,
         expires_at=now + 86_400, node="node-a")
    return digest


def test_a_live_holders_object_is_copied_to_its_owner_without_the_origin(make_settings, origin, tmp_path):
    path, url, key = owned_by_b(origin.port)
    origin.add(path, Resource(size=SIZE))
    content = b"".join(bytes(c) for c in generated_chunks(path, 0, SIZE))
    settings_b = make_settings(node_name="node-b")
    app = create_app(settings_b)
    catalog = app.catalog
    blobs_a = BlobStore(tmp_path / "node-a")
    digest = ready_on_a(catalog, blobs_a, url, key, content)
    with CacheServer(CatalogLookup(catalog, blobs_a, ttl=0.0), "127.0.0.2") as server_a, \
         CeleryWorker(settings_b, ["download"]) as worker:
        now = time.time()
        catalog.nodes.beat("node-a", "cache", now, public_url=server_a.base_url, disks=[Disk("/a", NODES["node-a"], 0)])
        catalog.nodes.beat("node-b", "cache", now, public_url="http://127.0.0.3:9", disks=[Disk("/b", NODES["node-b"], 0)])
        tally: Counter[str] = Counter()
        rehome_requested(app, [key], now, tally)
        assert tally == {"moving": 1}
        wait_for(lambda: catalog.get(key).node == "node-b", "the copy taken over by node-b", timeout=120,
                 detail=lambda: worker.log_text()[-3000:])
    entry = catalog.get(key)
    assert (entry.state, entry.blob, entry.claim_token) == ("ready", digest, None)
    assert BlobStore(settings_b.cache_dir).path(digest).read_bytes() == content
    assert origin.stats(path).methods.get("GET", 0) == 0  # peer fill: the origin was not asked again


def test_a_gone_holders_object_is_downloaded_again_by_its_owner(make_settings, origin, tmp_path):
    path, url, key = owned_by_b(origin.port)
    origin.add(path, Resource(size=SIZE))
    settings_b = make_settings(node_name="node-b", download_retries=1, download_timeout=10)
    app = create_app(settings_b)
    catalog = app.catalog
    content = b"".join(bytes(c) for c in generated_chunks(path, 0, SIZE))
    ready_on_a(catalog, BlobStore(tmp_path / "node-a"), url, key, content)
    now = time.time()
    catalog.nodes.beat("node-a", "cache", now - 3600, public_url="http://127.0.0.2:9")  # gone an hour ago
    catalog.nodes.beat("node-b", "cache", now, public_url="http://127.0.0.3:9", disks=[Disk("/b", 1 << 40, 0)])
    tally: Counter[str] = Counter()
    rehome_requested(app, [key], now, tally)
    assert tally == {"rehomed": 1} and catalog.get(key).state == "queued"
    with CeleryWorker(settings_b, ["download"]) as worker:
        wait_for(lambda: catalog.get(key).state == "ready", "node-b's download", timeout=120,
                 detail=lambda: worker.log_text()[-3000:])
    entry = catalog.get(key)
    assert entry.node == "node-b" and BlobStore(settings_b.cache_dir).path(entry.blob).read_bytes() == content
    assert origin.stats(path).methods["GET"] >= 1


def test_objects_on_their_owner_or_with_no_recorded_holder_stay(make_settings, origin, tmp_path):
    app = create_app(make_settings(node_name="node-b"))
    catalog = app.catalog
    path, url, key = owned_by_b(origin.port)
    ready_on_a(catalog, BlobStore(tmp_path / "node-a"), url, key, b"x" * 10)
    catalog.set_fields(key, ["ready"], node="node-b")
    other = "http://files.test/none.iso"
    ready_on_a(catalog, BlobStore(tmp_path / "node-a"), other, cache_key(other, {}), b"y" * 10)
    catalog.set_fields(cache_key(other, {}), ["ready"], node=None)
    catalog.nodes.beat("node-b", "cache", time.time(), public_url="http://127.0.0.3:9")
    tally: Counter[str] = Counter()
    rehome_requested(app, [key, cache_key(other, {})], time.time(), tally)
    assert tally == Counter() and catalog.get(key).state == "ready"
