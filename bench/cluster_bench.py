"""The cluster's figures side by side (printed, never asserted).

    .venv/bin/python bench/cluster_bench.py [--objects 50] [--size-kib 1024] [--seconds 3] [--skip beat]

1. Admission to ready, per broker (the embedded filesystem broker with SQLite, RabbitMQ and Redis
   with PostgreSQL): a real analyze worker and a real download worker (threads pool), a real origin
   on loopback; the clock runs from sending the analyze batch a capture node would send (admission
   on first sight) to the entry's published_at in the catalog. One object alone, then `--objects`
   in one batch (median and last of them).
2. Serve throughput with one and with two cache nodes: `cachetap serve` on 127.0.0.2 and 127.0.0.3
   (RabbitMQ and PostgreSQL, a download worker each), objects admitted and placed on their owners;
   wrk for `--seconds` against one node, then against both at once (aggregate).
3. Fail-open after kill -9 of a cache node: the capture's production redirect path (IndexSync,
   CacheTargets on the node registry, Redirector) run in this process, as tests/test_cluster.py
   does; from the kill until no key the dead node holds is redirected any more.
4. Beat takeover: bench/beat_takeover.py's measurement (two `celery beat` on PostgreSQL, SIGKILL the
   holder, until the standby holds the lease), one run, beside its 4/3-lease bound.

Each service gets a database, vhost or Redis database of its own (testing/services.py), removed after.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cachetap.capture.health import HealthGate
from cachetap.capture.hotindex import HotIndex
from cachetap.capture.index_sync import IndexSync
from cachetap.capture.redirector import RedirectScope, Redirector
from cachetap.capture.targets import CacheTargets, NodeURL
from cachetap.core.keys import cache_key
from cachetap.core.lifecycle import EntryState
from cachetap.core.types import Sighting
from cachetap.core.urls import object_url
from cachetap.settings import load_settings
from cachetap.store.nodes import CACHE_ROLE, liveness_window
from cachetap.tasks.app import create_app
from cachetap.testing import LOOPBACK_NETWORKS, services
from cachetap.testing.cluster import Node, decide
from cachetap.testing.origin import Origin, Resource
from cachetap.testing.waiting import free_port, wait_for
from cachetap.testing.workers import CeleryWorker
from cachetap.wire import ANALYZE_BATCH, encode_sighting

sys.path.insert(0, str(Path(__file__).parent))
from beat_takeover import takeovers  # noqa: E402  (the bench beside this one)

HEARTBEAT = 0.5
ADDRESSES = {"node-a": "127.0.0.2", "node-b": "127.0.0.3"}
LOCAL = "http://127.0.0.1:9"  # the capture's own configured cache server: none


def node_settings(root: Path, name: str, broker_url: str, database_url: str, origin: Origin, **extra):
    return load_settings(cache_dir=root / name / "cache", broker_url=broker_url, database_url=database_url,
                         node_name=name, node_heartbeat_interval=HEARTBEAT,
                         serve_host=ADDRESSES.get(name, "127.0.0.1"), serve_port=free_port(), run_as_user="",
                         admission_threshold=0, min_size=0, resolve_overrides={"files.test": ["127.0.0.1"]},
                         fetch_allow_networks=LOOPBACK_NETWORKS, download_retries=1, download_timeout=10,
                         serve_max_connections_per_address=10_000, **extra)


def url_of(origin: Origin, path: str) -> str:
    return f"http://files.test:{origin.port}{path}"


def send_sightings(app, origin: Origin, paths: list[str]) -> float:
    """What a capture node sends analyze for clients' GETs of `paths`; returns when it was sent."""
    now = time.time()
    batch = [encode_sighting(Sighting(now, "10.0.0.5", 40000 + i, "127.0.0.1", origin.port, "GET", "files.test",
                                      url_of(origin, p), cache_key(url_of(origin, p), {}), p))
             for i, p in enumerate(paths)]
    app.send_task(ANALYZE_BATCH, args=[batch], queue="analyze")
    return now


def ready_latencies(app, origin: Origin, paths: list[str], timeout: float = 120) -> list[float]:
    """Seconds from the batch's sending to each object's published_at."""
    keys = [cache_key(url_of(origin, p), {}) for p in paths]
    sent = send_sightings(app, origin, paths)
    deadline = time.monotonic() + timeout
    while True:
        entries = [app.catalog.get(k) for k in keys]
        if all(e is not None and e.state == EntryState.READY for e in entries):
            return [e.published_at - sent for e in entries]
        failed = [e for e in entries if e is not None and e.state == EntryState.FAILED]
        if failed or time.monotonic() > deadline:
            raise RuntimeError(f"not ready: {failed[0].reason if failed else 'timed out'}")
        time.sleep(0.01)


# --- 1. admission to ready per broker ---------------------------------------------------------------

def admission(root: Path, label: str, broker_url: str, database_url: str, origin: Origin, objects: int,
              size: int) -> tuple[float, list[float]]:
    settings = node_settings(root / label, "solo", broker_url, database_url, origin)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    with CeleryWorker(settings, ["analyze"], concurrency=2, name=f"analyze-{label}"), \
            CeleryWorker(settings, ["download"], concurrency=settings.download_max_concurrent, pool="threads",
                         name=f"download-{label}"):
        for path in [f"/{label}/warm.bin", f"/{label}/one.bin"] + [f"/{label}/many/{i}.bin" for i in range(objects)]:
            origin.add(path, Resource(size=size))
        ready_latencies(app, origin, [f"/{label}/warm.bin"])  # aria2c starts with the worker's first job
        one = ready_latencies(app, origin, [f"/{label}/one.bin"])[0]
        many = ready_latencies(app, origin, [f"/{label}/many/{i}.bin" for i in range(objects)])
    app.catalog.engine.dispose()
    return one, many


# --- 2 and 3: two cache nodes -------------------------------------------------------------------------

def wrk(urls: list[str], seconds: int, connections: int) -> float:
    """Bytes per second summed over one wrk per URL, all running at once."""
    runs = [subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url], stdout=subprocess.PIPE,
                             text=True) for url in urls]
    total = 0.0
    for run in runs:
        out = run.communicate(timeout=seconds + 60)[0]
        line = next(x for x in out.splitlines() if x.startswith("Transfer/sec:"))
        number, unit = line.split()[1][:-2], line.split()[1][-2:]
        total += float(number) * {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}.get(unit, 1)
    return total


def cluster(root: Path, broker_url: str, database_url: str, origin: Origin, size: int, seconds: int) -> dict:
    nodes = {name: Node(name, node_settings(root, name, broker_url, database_url, origin), pool="threads", concurrency=4)
             for name in ADDRESSES}
    analyzer = node_settings(root, "analyzer", broker_url, database_url, origin)
    app = create_app(analyzer)
    figures: dict = {}
    with ExitStack() as stack:
        for node in nodes.values():
            stack.callback(node.stop)
            node.start()
        stack.enter_context(CeleryWorker(analyzer, ["analyze"], concurrency=2, name="analyzer"))
        window = liveness_window(HEARTBEAT)
        wait_for(lambda: len(app.catalog.nodes.live(time.time(), window, role=CACHE_ROLE)) == 2,
                 "both cache nodes registered", timeout=60)
        time.sleep(1.1)  # the analyze worker's view of the live nodes is at most a second old
        paths = [f"/cluster/{i}.bin" for i in range(8)]
        for path in paths:
            origin.add(path, Resource(size=size))
        ready_latencies(app, origin, paths)
        held: dict[str, list[str]] = {name: [] for name in nodes}
        for path in paths:
            key = cache_key(url_of(origin, path), {})
            held[app.catalog.get(key).node].append(key)
        if not all(held.values()):
            raise RuntimeError(f"objects not spread over both nodes: {held}")
        url = {name: object_url(nodes[name].url, held[name][0], "object.bin") for name in nodes}
        for name, link in url.items():  # wrk counts bytes, whatever the status: check the answer once
            with urllib.request.urlopen(link, timeout=30) as answer:
                if answer.status != 200 or len(answer.read()) != size:
                    raise RuntimeError(f"{link}: not the whole object")

        figures["serve one node"] = wrk([url["node-a"]], seconds, 8)
        figures["serve two nodes"] = wrk([url["node-a"], url["node-b"]], seconds, 8)

        index = HotIndex()
        read = lambda: [NodeURL(n.name, n.public_url) for n in app.catalog.nodes.live(time.time(), window,  # noqa: E731
                                                                                          role=CACHE_ROLE)]
        targets = CacheTargets(LOCAL, HealthGate(LOCAL).start(), lambda u: HealthGate(u).start(), read).start(HEARTBEAT)
        sync = IndexSync(app, index, node="bench", reconcile_every=2.0, node_index=targets.index_of).start()
        stack.callback(targets.stop)
        stack.callback(sync.stop)
        redirector = Redirector(index, targets.slots[0].gate, LOCAL, RedirectScope(), targets.addresses,
                                targets=targets, fetch_guard=lambda _address: None)
        dead = [p for p in paths if cache_key(url_of(origin, p), {}) in held["node-b"]]
        wait_for(lambda: all(decide(redirector, "files.test", origin.port, p) for p in dead), "node-b's keys redirected", timeout=30)
        nodes["node-b"].kill()
        killed = time.monotonic()
        wait_for(lambda: all(decide(redirector, "files.test", origin.port, p) is None for p in dead), "node-b's keys failing open",
                 timeout=30, step=0.005)
        figures["fail open"] = time.monotonic() - killed
    app.catalog.engine.dispose()
    return figures


# --- the run ---------------------------------------------------------------------------------------

@contextmanager
def stacks(wanted: list[str]) -> Iterator[dict[str, tuple[str, str]]]:
    """label -> (broker_url, database_url), each on resources of its own."""
    with ExitStack() as stack:
        found = {}
        for label in wanted:
            if label == "embedded":
                found[label] = ("", "")
                continue
            database = stack.enter_context(services.scratch_database("postgresql"))
            broker = stack.enter_context(services.rabbitmq_vhost() if label == "rabbitmq" else services.redis_database())
            found[label] = (broker, database)
        yield found


def mib_s(value: float) -> str:
    return f"{value / (1 << 20):,.0f} MiB/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=50)
    ap.add_argument("--size-kib", type=int, default=1024)
    ap.add_argument("--seconds", type=int, default=3, help="each wrk run")
    ap.add_argument("--brokers", default="embedded,rabbitmq,redis")
    ap.add_argument("--skip", default="", help="comma-separated: admission, cluster, beat")
    args = ap.parse_args()
    logging.getLogger("cachetap").setLevel(logging.ERROR)  # health gates report each change: figures only
    skip = set(filter(None, args.skip.split(",")))
    size = args.size_kib << 10
    root = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    rows: dict[str, tuple[float, list[float]]] = {}
    figures: dict = {}
    beat: list[float] = []
    lease = 3.0
    try:
        with Origin() as origin, stacks(args.brokers.split(",")) as found:
            if "admission" not in skip:
                for label, (broker, database) in found.items():
                    rows[label] = admission(root, label, broker, database, origin, args.objects, size)
                    print(f"admission on {label} done", file=sys.stderr)
            if "cluster" not in skip:
                broker, database = next(v for k, v in found.items() if k != "embedded")
                figures = cluster(root / "cluster", broker, database, origin, size, args.seconds)
                print("cluster done", file=sys.stderr)
        if "beat" not in skip:
            with services.scratch_database("postgresql") as database:
                beat = takeovers(database, root / "beat", 1, lease)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nmeasured on a loaded machine ({os.cpu_count()} CPUs); objects of {args.size_kib} KiB, one run")
    if rows:
        print(f"\nsighting sent -> ready (admission, probe, download, publish), seconds")
        print(f"{'broker':<28}{'1 object':>10}{f'{args.objects} median':>12}{f'{args.objects} last':>10}")
        for label, (one, many) in rows.items():
            name = {"embedded": "embedded + SQLite", "rabbitmq": "RabbitMQ + PostgreSQL",
                    "redis": "Redis + PostgreSQL"}.get(label, label)
            print(f"{name:<28}{one:>10.3f}{statistics.median(many):>12.3f}{max(many):>10.3f}")
    if figures:
        print(f"\ncache servers (wrk -t1 -c8 -d{args.seconds}s per node, whole {args.size_kib} KiB object)")
        print(f"{'one cache node':<28}{mib_s(figures['serve one node']):>16}")
        print(f"{'two cache nodes (sum)':<28}{mib_s(figures['serve two nodes']):>16}")
        print(f"\nfail-open after kill -9 of a cache node: {figures['fail open']:.3f} s "
              f"(health_interval 0.25 s, timeout 0.5 s)")
    if beat:
        print(f"beat takeover after SIGKILL (PostgreSQL, beat_lease {lease:g} s, bound {lease * 4 / 3:.2f} s): "
              f"{beat[0]:.2f} s")


if __name__ == "__main__":
    main()
