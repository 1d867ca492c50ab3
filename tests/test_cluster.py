"""Two cache nodes on RabbitMQ and PostgreSQL (and on Redis and MariaDB), each its own process group,
address and directories.

Topology (built once, scenarios run on it in order): node-a serves on 127.0.0.2 and node-b on
127.0.0.3 (`cachetap serve` plus a download worker each, with cache directories of their own); one
analyze worker; one origin on 127.0.0.1. Distinct loopback addresses rather than namespaces: the
machine's RabbitMQ and PostgreSQL listen on 127.0.0.1 only, which a process in another namespace
cannot reach, and every node here must reach both. The capture side is the production redirect
path (IndexSync on the broker's index events and the catalog, CacheTargets on the node registry,
Redirector) run in this process without a raw socket; clients are real curl processes fetching the
Location it decides. Not covered here: live capture with clients in namespaces, two capture nodes,
the beat (tests of their own).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from cachetap.capture.health import HealthGate
from cachetap.capture.hotindex import HotIndex
from cachetap.capture.index_sync import IndexSync
from cachetap.capture.redirector import RedirectScope, Redirector
from cachetap.capture.targets import CacheTargets, NodeURL
from cachetap.core.keys import cache_key
from cachetap.core.placement import members_from, owner
from cachetap.core.types import Sighting
from cachetap.settings import load_settings
from cachetap.store.nodes import CACHE_ROLE, liveness_window
from cachetap.tasks.app import create_app
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.cluster import Node
from cachetap.testing.cluster import decide as cluster_decide
from cachetap.testing.origin import Origin, Resource, generated_chunks
from cachetap.testing.waiting import free_port, wait_for
from cachetap.testing.workers import CeleryWorker
from cachetap.wire import ANALYZE_BATCH, encode_sighting

pytestmark = pytest.mark.services

MiB = 1 << 20
SIZE = MiB + 4097
HEARTBEAT = 0.5
ADDRESSES = {"node-a": "127.0.0.2", "node-b": "127.0.0.3"}
LOCAL = "http://127.0.0.1:9"  # the capture's own configured cache server: none


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.fixture(params=[("rabbitmq_broker_url", "postgresql_url"), ("redis_broker_url", "mariadb_url")],
                ids=["rabbitmq-postgresql", "redis-mariadb"])
def cluster(request, tmp_path, origin):
    broker_url, database = (request.getfixturevalue(name) for name in request.param)

    def settings_for(name: str, **extra):
        return load_settings(cache_dir=tmp_path / name / "cache", broker_url=broker_url,
                             database_url=database, node_name=name, node_heartbeat_interval=HEARTBEAT,
                             serve_host=ADDRESSES.get(name, "127.0.0.1"), serve_port=free_port(),
                             run_as_user="", admission_threshold=0, min_size=MiB,
                             resolve_overrides={"files.test": ["127.0.0.1"]}, fetch_allow_networks=LOOPBACK_NETWORKS,
                             download_retries=1, download_timeout=10, log_level="INFO", **extra)

    nodes = {name: Node(name, settings_for(name)) for name in ADDRESSES}
    analyzer = settings_for("analyzer")
    app = create_app(analyzer)
    started = []
    try:
        for node in nodes.values():
            started.append(node.start())
        analyze = CeleryWorker(analyzer, ["analyze"], name="analyzer").start()
        yield app, nodes, settings_for
        analyze.stop()
    finally:
        for node in started:
            node.kill()  # process groups and all: a graceful stop only made the teardown wait
        app.catalog.engine.dispose()


def registry_reader(app):
    def read():
        return [NodeURL(n.name, n.public_url) for n in app.catalog.nodes.nodes(time.time(), liveness_window(HEARTBEAT))
                if CACHE_ROLE in n.roles]
    return read


def clients_get(app, origin: Origin, paths: list[str]) -> None:
    """What a capture node sends analyze for clients' GETs of `paths`."""
    now = time.time()
    sightings = [encode_sighting(Sighting(now, "10.0.0.5", 40000 + i, "127.0.0.1", origin.port, "GET", "files.test",
                                          f"http://files.test:{origin.port}{p}", cache_key(f"http://files.test:{origin.port}{p}", {}),
                                          p)) for i, p in enumerate(paths)]
    app.send_task(ANALYZE_BATCH, args=[sightings], queue="analyze")


def decide(redirector: Redirector, origin: Origin, path: str):
    return cluster_decide(redirector, "files.test", origin.port, path)


def curl(url: str) -> bytes:
    return subprocess.run(["curl", "-sS", "--fail", "--max-time", "60", url], capture_output=True, check=True,
                          timeout=90).stdout


def content(path: str) -> bytes:
    return b"".join(bytes(c) for c in generated_chunks(path, 0, SIZE))


def test_objects_spread_over_two_cache_nodes_fail_open_rehome_and_peer_fill(cluster, origin, request):
    app, nodes, _settings_for = cluster
    catalog = app.catalog
    live = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(
        catalog.nodes.live(time.time(), liveness_window(HEARTBEAT), role=CACHE_ROLE)), "both cache nodes registered",
        timeout=60)
    assert {n.name: n.public_url for n in live} == {name: node.url for name, node in nodes.items()}
    members = members_from({n.name: n.capacity for n in live})

    # Paths whose keys each node owns: three each.
    paths: dict[str, list[str]] = {"node-a": [], "node-b": []}
    i = 0
    while min(len(p) for p in paths.values()) < 3:
        path = f"/cluster/{i}.iso"
        holder = owner(cache_key(f"http://files.test:{origin.port}{path}", {}), members)
        if len(paths[holder]) < 3:
            paths[holder].append(path)
            origin.add(path, Resource(size=SIZE))
        i += 1
    every = paths["node-a"] + paths["node-b"]

    index = HotIndex()
    targets = CacheTargets(LOCAL, HealthGate(LOCAL).start(), lambda url: HealthGate(url).start(),
                           registry_reader(app)).start(HEARTBEAT)
    sync = IndexSync(app, index, node="e2e", reconcile_every=2.0, node_index=targets.index_of).start()
    redirector = Redirector(index, targets.slots[0].gate, LOCAL, RedirectScope(), targets.addresses,
                            targets=targets, fetch_guard=lambda _address: None)
    try:
        # 1. Admitted objects land on their owners; clients are sent to the holder and get the bytes.
        clients_get(app, origin, every)
        key_of = {p: cache_key(f"http://files.test:{origin.port}{p}", {}) for p in every}
        wait_for(lambda: all((e := catalog.get(key_of[p])) is not None and e.state == "ready" for p in every),
                 "every object ready", timeout=180)
        for name, node in nodes.items():
            for path in paths[name]:
                assert catalog.get(key_of[path]).node == name
                decision = wait_for(lambda: decide(redirector, origin, path), f"a redirect for {path}", timeout=30)
                assert decision.location.startswith(f"{node.url}/c/{key_of[path]}/")
                assert curl(decision.location) == content(path)
        fetched = {p: origin.stats(p).methods["GET"] for p in every}

        # 2. node-b dies: its keys fail open, node-a keeps serving its own.
        nodes["node-b"].kill()
        killed = time.monotonic()
        wait_for(lambda: all(decide(redirector, origin, p) is None for p in paths["node-b"]),
                 "node-b's keys failing open", timeout=30, step=0.02)
        fail_open = time.monotonic() - killed
        print(f"\nnode-b killed: its keys stopped being redirected after {fail_open:.3f}s")
        for path in paths["node-a"]:
            assert curl(decide(redirector, origin, path).location) == content(path)

        if request.node.callspec.id == "redis-mariadb":
            return  # re-homing and peer fill are broker- and database-neutral: shown once, on RabbitMQ + PostgreSQL

        # 3. Once node-b is out of the registry, requests re-home its keys to node-a (from the origin).
        wait_for(lambda: len(catalog.nodes.live(time.time(), liveness_window(HEARTBEAT), role=CACHE_ROLE)) == 1,
                 "node-b out of the registry", timeout=30)
        time.sleep(1.1)  # the analyze worker's view of the live nodes is at most a second old
        clients_get(app, origin, paths["node-b"])
        wait_for(lambda: all(catalog.get(key_of[p]).node == "node-a" and catalog.get(key_of[p]).state == "ready"
                             for p in paths["node-b"]), "node-b's objects re-homed on node-a", timeout=180)
        for path in paths["node-b"]:
            decision = wait_for(lambda: decide(redirector, origin, path), f"a redirect for {path}", timeout=30)
            assert decision.location.startswith(nodes["node-a"].url) and curl(decision.location) == content(path)
            assert origin.stats(path).methods["GET"] > fetched[path]  # node-b's copy was out of reach

        # 4. node-b comes back: requests move its share back from node-a's cache server (peer fill).
        nodes["node-b"].start()
        wait_for(lambda: len(catalog.nodes.live(time.time(), liveness_window(HEARTBEAT), role=CACHE_ROLE)) == 2,
                 "node-b registered again", timeout=60)
        time.sleep(1.1)
        refetched = {p: origin.stats(p).methods["GET"] for p in paths["node-b"]}
        clients_get(app, origin, paths["node-b"])
        wait_for(lambda: all(catalog.get(key_of[p]).node == "node-b" for p in paths["node-b"]),
                 "node-b's share copied back from node-a", timeout=180)
        for path in paths["node-b"]:
            decision = wait_for(lambda: (d := decide(redirector, origin, path)) and d.location.startswith(
                nodes["node-b"].url) and d, f"a redirect to node-b for {path}", timeout=30)
            assert curl(decision.location) == content(path)
            assert origin.stats(path).methods["GET"] == refetched[path]  # copied from the peer, not the origin
    finally:
        sync.stop()
        targets.stop()
