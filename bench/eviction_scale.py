"""Choosing eviction victims among a million catalog records: time per victim, memory untouched.

    python bench/eviction_scale.py [--records 1000000] [--url sqlite:////tmp/evict.db] [--policy lrfu]

Fills `entries` with `--records` ready entries of 1,000 bytes and `policy_records` with a resident
record for each (random priorities), then times
  * the policy's `make_room` for 100 objects (admission), each victim found by an indexed ORDER BY
    priority LIMIT 1, inside one locked policy transaction (as a worker runs it);
  * the housekeeping quota pass (`run_quota`) with the quota set 100 entries below what is stored:
    the stored bytes summed in SQL, victims in the policy's order, each evicted from the catalog.
Peak RSS growth shows that no pass loads every row.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time

import sqlalchemy as sa

from cachetap.core.policy import make_policy
from cachetap.core.policy.base import USED
from cachetap.settings import Settings
from cachetap.store.blobs import BlobStore
from cachetap.store.catalog import ENTRIES, Catalog
from cachetap.store.db import make_engine, upgrade
from cachetap.store.policy_store import RECORDS, CatalogPolicyStore
from cachetap.tasks.housekeeping import run_quota


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--url", default=None, help="catalog URL (default: a temporary SQLite file)")
    ap.add_argument("--policy", default="lru", help="eviction policy whose order is timed")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    url = args.url or f"sqlite:///{os.path.join(tmp, 'evict.db')}"
    upgrade(url)
    engine = make_engine(url)
    rng = random.Random(1)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        records, entries = [], []
        for i in range(args.records):
            key = f"{i:032x}"
            last = rng.uniform(0, 1e9)
            records.append({"key": key, "queue": "main", "priority": last, "size": 1000, "freq": 1.0, "last": last})
            entries.append({"key": key, "url": f"http://files.test/{i}", "host": "files.test", "filename": str(i),
                            "state": "ready", "hits": 2, "first_seen": 0.0, "last_hit": last, "size": 1000,
                            "stored_size": 1000, "created_at": 0.0, "updated_at": 0.0})
            if len(records) == 20_000:
                conn.execute(sa.insert(RECORDS), records)
                conn.execute(sa.insert(ENTRIES), entries)
                records.clear()
                entries.clear()
        if records:
            conn.execute(sa.insert(RECORDS), records)
            conn.execute(sa.insert(ENTRIES), entries)
    print(f"filled {args.records:,} entries and policy records in {time.perf_counter() - t0:.1f} s")
    store = CatalogPolicyStore(engine)
    store.set_value(USED, args.records * 1000.0)
    policy = make_policy(args.policy, store, args.records * 1000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    with store.transaction():
        victims = policy.make_room(100 * 1000, now=2e9)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{args.policy} make_room: {len(victims)} victims among {args.records:,} in {took * 1000:.1f} ms wall, "
          f"{cpu * 1000:.1f} ms CPU ({cpu / max(1, len(victims)) * 1000:.2f} ms CPU per victim)")
    settings = Settings(cache_dir=tmp, database_url=url, eviction_policy=args.policy,
                        disk_quota=(args.records - 200) * 1000, min_free_bytes=0)
    t0, c0 = time.perf_counter(), time.process_time()
    summary = run_quota(Catalog(engine), BlobStore(os.path.join(tmp, "blobs")), settings, free_bytes=1 << 50, now=2e9)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"quota pass ({args.policy} order): {summary['evicted']} entries evicted among {args.records:,} in "
          f"{took * 1000:.1f} ms wall, {cpu * 1000:.1f} ms CPU; peak RSS grew {(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024:.1f} MiB")
    engine.dispose()


if __name__ == "__main__":
    main()
