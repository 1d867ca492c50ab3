"""The catalog going away under a running cache server: clients still reach their downloads.

A real PostgreSQL catalog is dropped (connections terminated) while the server runs: a redirected
request goes back to its origin through the signed hint instead of having its connection reset, and
/healthz says 503 so captures stop sending clients here until the catalog answers again.
"""

from __future__ import annotations

import hashlib
import subprocess
import time

import blake3
import sqlalchemy as sa

from cachetap.core.urls import object_url
from cachetap.store.blobs import BlobStore
from cachetap.store.catalog import open_catalog
from cachetap.testing.entries import walk
from cachetap.testing.services import URLS, scratch_database
from cachetap.core.types import Sighting
from cachetap.web.lookup import CatalogLookup
from cachetap.web.server import CacheServer

URL = "http://files.example/os/disk.iso"
KEY = hashlib.sha256(URL.encode()).hexdigest()[:32]
DATA = bytes(range(256)) * 512
SECRET = b"s" * 32


def curl(url: str) -> tuple[str, str]:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", url],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr  # a reset connection would fail here
    code, _, location = out.stdout.partition(" ")
    return code, location


def drop(database_url: str) -> None:
    name = sa.make_url(database_url).database
    admin = sa.create_engine(URLS["postgresql"].format(db="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


def test_a_dropped_catalog_sends_clients_to_their_origin_and_fails_the_health_check(tmp_path):
    with scratch_database("postgresql") as database_url:
        catalog, blobs = open_catalog(database_url), BlobStore(tmp_path / "cache")
        now = time.time()
        catalog.record_sightings([Sighting(ts=now, client="10.0.0.7", client_port=5, server="192.0.2.1",
                                           server_port=80, method="GET", host="files.example", url=URL,
                                           key=KEY, target="/os/disk.iso")], 86_400, now)
        temp = blobs.new_temp_name(KEY)
        temp.write_bytes(DATA)
        digest = blake3.blake3(DATA).hexdigest()
        blobs.publish(temp, digest)
        walk(catalog, KEY, "ready", blob=digest, size=len(DATA), stored_size=len(DATA), filename="disk.iso")
        lookup = CatalogLookup(catalog, blobs, ttl=0.0)
        with CacheServer(lookup, hint_secret=SECRET) as server:
            redirected = object_url(server.base_url, KEY, "disk.iso", origin=URL, secret=SECRET)
            assert curl(redirected)[0] == "200"
            assert curl(server.base_url + "/healthz")[0] == "200"

            drop(database_url)
            assert curl(redirected) == ("302", URL)           # fail open: back to the origin
            assert curl(server.base_url + "/healthz")[0] == "503"
            bare = object_url(server.base_url, KEY, "disk.iso")  # no hint: nowhere to send it
            assert curl(bare)[0] == "404"
        catalog.engine.dispose()
