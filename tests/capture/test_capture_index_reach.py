"""Purges and Redis: publish/subscribe keeps nothing for an absent subscriber, so the bound on how long
a capture node can act on a stale index (that purges reach every live capture node, on RabbitMQ and
Redis, is shown at real clients in tests/test_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import redis

from cachetap.settings import load_settings
from cachetap.store.blobs import BlobStore
from cachetap.store.evict import evict
from cachetap.tasks.app import create_app
from cachetap.tasks.index_events import IndexNotifier, publish_index_event
from cachetap.testing.waiting import wait_for
from cachetap.testing.workers import settings_env
from tests.capture.test_capture_index_sync import key_for, make_ready


class IndexNode:
    """`python -m cachetap.testing.index_node`: one capture node's redirect index as its own process."""

    def __init__(self, settings, name: str, keys: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
        env.update(settings_env(settings), PYTHONUNBUFFERED="1")
        self.log = settings.cache_dir / f"node-{name}.log"
        with open(self.log, "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "cachetap.testing.index_node", name, *keys],
                                            stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        self.lines: list[tuple[float, str, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            ts, key, state = line.split()
            self.lines.append((float(ts), key, state))

    def state(self, key: str) -> str | None:
        found = [s for _, k, s in self.lines if k == key]
        return found[-1] if found else None

    def when(self, key: str, state: str, after: float) -> float | None:
        return next((ts for ts, k, s in self.lines if k == key and s == state and ts >= after), None)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def detail(self) -> str:
        return f"lines {self.lines}\n{self.log.read_text(errors='replace')[-3000:]}"


def subscribed(app, nodes: list[IndexNode]) -> None:
    """Wait until every node's event consumer is bound: a probe key published as ready shows up."""
    probe = key_for("probe")
    wait_for(lambda: publish_index_event(app, "ready", [probe])
             and all(n.state(probe) == "present" for n in nodes), timeout=60, step=0.5,
             detail=lambda: "\n".join(n.detail() for n in nodes))


# A purge from one node reaching two live capture nodes on RabbitMQ (and on Redis while they are
# connected) is shown at real clients in tests/test_cluster.py.


RECONCILE = 3.0


def test_redis_node_that_missed_a_purge_stops_redirecting_within_the_bound(tmp_path, redis_broker_url):
    settings = load_settings(cache_dir=tmp_path / "cache", broker_url=redis_broker_url,
                             index_reconcile_interval=RECONCILE)
    app = create_app(settings)
    catalog, blobs, notify = app.catalog, BlobStore(settings.cache_dir), IndexNotifier(app)
    silent, cut_off, while_down = (make_ready(catalog, name, time.time() + 3600)
                                   for name in ("silent", "cut-off", "while-down"))
    keys = [silent, cut_off, while_down, key_for("probe")]
    node = IndexNode(settings, "cap", keys)
    try:
        wait_for(lambda: node.state(while_down) == "present", timeout=60, detail=node.detail)
        subscribed(app, [node])
        # 1. Removed with no event at all (lost between two polls): the periodic reconcile repairs it.
        removed = time.time()
        assert catalog.remove(silent)
        wait_for(lambda: node.state(silent) == "absent", timeout=RECONCILE + 5, detail=node.detail)
        assert node.when(silent, "absent", removed) - removed <= RECONCILE + 1.0
        print(f"no event: absent after {node.when(silent, 'absent', removed) - removed:.2f}s")
        # 2. The node's event connection drops and the purge is broadcast while it is away:
        #    publish/subscribe keeps nothing for it, so the node reconciles the moment it is back.
        client = redis.Redis.from_url(redis_broker_url)
        db = client.connection_pool.connection_kwargs["db"]
        ours = [c["id"] for c in client.client_list() if "P" in c["flags"] or c["cmd"] in ("subscribe", "psubscribe")]
        ours = [c["id"] for c in client.client_list() if c["id"] in ours and int(c["db"]) == db]
        assert ours, client.client_list()
        for client_id in ours:
            client.client_kill_filter(_id=client_id)
        purged = time.time()
        assert evict(catalog, blobs, cut_off, "purge", on_removed=notify.removed)
        wait_for(lambda: node.state(cut_off) == "absent", timeout=RECONCILE + 5, detail=node.detail)
        assert "reconciling with the catalog now" in node.log.read_text()
        assert node.when(cut_off, "absent", purged) - purged <= RECONCILE + 1.0
        print(f"connection cut: absent after {node.when(cut_off, 'absent', purged) - purged:.2f}s")
        # 3. The node is down during the purge: back, it never redirects the key again.
        node.kill()
        assert evict(catalog, blobs, while_down, "purge", on_removed=notify.removed)
        node = IndexNode(settings, "cap", keys)
        wait_for(lambda: node.state(while_down) is not None, timeout=60, detail=node.detail)
        assert [s for _, k, s in node.lines if k == while_down] == ["absent"]
        client.close()
    finally:
        node.kill()
        catalog.engine.dispose()
