"""New files stay servable: a file written just now, prefetched, then requested again and again.

One real stack for the module: the test origin, a Celery worker on the download and analyze queues,
the cache server on the real catalog, and a capture's redirect index kept by IndexSync. A client
GETs the object's cache URL in a loop, as clients following 302s do; a 302 back to the origin means
the cache did not serve it. When the cache bounces a client, the request is reported to the analyze
queue as a capture reports what it sees (BatchSender, the capture's own sender).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cachetap.capture.batcher import analyze_batch_sender
from cachetap.capture.hotindex import HotIndex
from cachetap.capture.index_sync import IndexSync
from cachetap.cli.catalog_cmds import open_catalog
from cachetap.core.keys import cache_key, url_filename
from cachetap.core.types import Sighting
from cachetap.settings import load_settings
from cachetap.store.blobs import BlobStore
from cachetap.tasks.app import create_app
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.origin import Origin, Resource
from cachetap.testing.workers import CeleryWorker, settings_env
from cachetap.web.lookup import CatalogLookup
from cachetap.web.server import CacheServer
from cachetap.core.urls import object_url

MiB = 1 << 20
WAIT = 120
NEW_FILE_SECONDS = 60.0  # the heuristic made such a file fresh for ~0.3 s; a minute of GETs shows it stays served
LOOP_SECONDS = 10.0      # a 2 s max-age expires four or five times in this loop
SETTLE = 3.0          # the first seconds may go to the origin


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fresh")
    with Origin() as origin:
        settings = load_settings(cache_dir=tmp / "cache", resolve_overrides={"files.test": ["127.0.0.1"]},
                                 download_split=2, download_connections_per_server=2, batch_interval=0.05,
                                 trusted_networks=["127.0.0.0/8"], fetch_allow_networks=LOOPBACK_NETWORKS)
        app = create_app(settings)
        catalog = open_catalog(settings)
        index = HotIndex()
        sync = IndexSync(app, index, node=f"test{os.getpid()}", reconcile_every=3600).start()
        with CeleryWorker(settings, ["download", "analyze"], concurrency=2) as worker, \
                CacheServer(CatalogLookup(catalog, BlobStore(settings.cache_dir), ttl=0.0)) as server:
            assert sync.ready.wait(30)
            yield origin, settings, app, catalog, index, server, worker
        sync.stop()


def prefetch(settings, url: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(settings_env(settings))
    done = subprocess.run([sys.executable, "-m", "cachetap", "prefetch", url], env=env, capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return cache_key(url, {})


def get_loop(server, key: str, url: str, seconds: float, on_bounce=None) -> list[tuple[float, int]]:
    """(seconds since start, status) of back-to-back GETs of the object's cache URL."""
    cache_url = object_url(server.base_url, key, url_filename(url), url)
    results = []
    start = time.monotonic()
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        while (elapsed := time.monotonic() - start) < seconds:
            status = client.get(cache_url, headers={"Range": "bytes=0-1023"}).status_code
            results.append((elapsed, status))
            if status == 302 and on_bounce is not None:
                on_bounce()
            time.sleep(0.05)
    return results


def test_a_file_written_just_now_is_served_from_the_cache_right_after_prefetch(stack):
    origin, settings, app, catalog, index, server, worker = stack
    origin.add("/patch.zip", Resource(size=2 * MiB, mtime=int(time.time())))
    url = f"http://files.test:{origin.port}/patch.zip"
    key = prefetch(settings, url)
    entry = catalog.get(key)
    assert entry.state == "ready" and entry.expires_at > time.time() + 86_000  # the day for big files
    results = get_loop(server, key, url, NEW_FILE_SECONDS)
    late = [status for at, status in results if at >= SETTLE]
    assert late and all(status == 206 for status in late), results
    # The capture's index holds the key with its deadline (from the ready event or the reconcile).
    assert index.contains(key) and abs(index.expires(key) - entry.expires_at) <= 1


def test_a_requested_expired_object_is_revalidated_at_once_one_request_at_a_time(stack):
    origin, settings, app, catalog, index, server, worker = stack
    # An explicit short lifetime is obeyed: the copy turns stale every 2 s and is asked for again.
    origin.add("/short.iso", Resource(size=2 * MiB, cache_control="max-age=2"))
    url = f"http://files.test:{origin.port}/short.iso"
    key = prefetch(settings, url)
    sender = analyze_batch_sender(app, settings)
    sighting = Sighting(ts=0, client="127.0.0.1", client_port=40000, server="127.0.0.1", server_port=origin.port,
                        method="GET", host="files.test", url=url, key=key, target="/short.iso")
    in_index: list[bool] = []

    def report():  # what a capture sends for a request it did not redirect
        # Redirectable by the capture's index only while the catalog (the cache server) serves it too.
        in_index.append(index.contains(key) and not catalog.get(key).expires_at > time.time())
        sender.add({**sighting.to_dict(), "ts": time.time()})

    try:
        heads_before = origin.stats("/short.iso").statuses[304]
        results = get_loop(server, key, url, LOOP_SECONDS, on_bounce=report)
    finally:
        sender.close()
    served = [at for at, status in results if status == 206]
    bounced = [at for at, status in results if status == 302]
    revalidations = origin.stats("/short.iso").statuses[304] - heads_before
    log = worker.log_text()[-3000:]
    # Four or five expiries in 10 s; each is answered by one conditional request, not a 10-min pass.
    assert revalidations >= 3, (results, log)
    assert revalidations <= LOOP_SECONDS / 2 + 1, (revalidations, results)  # never two for one expiry
    assert len(served) >= 0.6 * len(results), (results, log)
    assert not any(in_index), "the capture's index redirected to a copy past its deadline"
    gaps = [b - a for a, b in zip(served, served[1:])]
    assert max(gaps) < 2.0, (results, log)  # a bounce streak ends with the next 304


def cachetap(settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(settings_env(settings))
    return subprocess.run([sys.executable, "-m", "cachetap", *args], env=env, capture_output=True, text=True,
                          timeout=WAIT)


def test_ls_says_why_an_entry_is_not_served_and_where_clients_go(stack):
    origin, settings, app, catalog, index, server, worker = stack
    origin.add("/listed.iso", Resource(size=2 * MiB, cache_control="max-age=1"))
    origin.add("/gone.iso", Resource(size=2 * MiB))
    url = f"http://files.test:{origin.port}/listed.iso"
    key = prefetch(settings, url)
    missing = cachetap(settings, "prefetch", f"http://files.test:{origin.port}/nothing.iso")
    assert missing.returncode == 1
    time.sleep(1.5)  # past its max-age, and nobody asked for it since
    listed = cachetap(settings, "ls")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:-1]}
    assert "no, stale for" in lines[key] and lines[key].endswith(url)
    failed = cachetap_key(f"http://files.test:{origin.port}/nothing.iso")
    assert "no, rejected: probe_status_404" in lines[failed]
    fresh = [line for line in lines.values() if "/patch.zip" in line]
    if fresh:  # from the first test: served, clients go to the cache server
        assert ("yes, fresh for 24h" in fresh[0] or "yes, fresh for 1d" in fresh[0]) and "/c/" in fresh[0]
    as_json = [json.loads(line) for line in cachetap(settings, "ls", "--json").stdout.splitlines()]
    entry = next(e for e in as_json if e["key"] == key)
    assert entry["served"] is False and entry["why"].startswith("stale for") and entry["sent_to"] == url
    bogus = cachetap(settings, "ls", "--state", "bogus")
    assert bogus.returncode == 2 and "Traceback" not in bogus.stderr
    assert "'bogus' is not one of 'counting', 'probing'" in bogus.stderr, bogus.stderr


def cachetap_key(url: str) -> str:
    return cache_key(url, {})
