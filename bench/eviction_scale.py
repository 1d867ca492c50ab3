"""Choosing eviction victims among a million catalog records: time per victim, memory untouched.

    python bench/eviction_scale.py [--records 1000000] [--url sqlite:////tmp/evict.db]

Fills `policy_records` with `--records` resident records (random priorities), then times an LRU
`make_room` that must evict 100 objects, each victim found by an indexed ORDER BY priority LIMIT 1,
inside one locked policy transaction (as a worker runs it).
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
from cachetap.store.db import make_engine, upgrade
from cachetap.store.policy_store import RECORDS, CatalogPolicyStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--url", default=None, help="catalog URL (default: a temporary SQLite file)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    url = args.url or f"sqlite:///{os.path.join(tmp, 'evict.db')}"
    upgrade(url)
    engine = make_engine(url)
    rng = random.Random(1)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        batch = []
        for i in range(args.records):
            batch.append({"key": f"{i:032x}", "queue": "main", "priority": rng.uniform(0, 1e9), "size": 1000,
                          "freq": 1.0, "last": 0.0})
            if len(batch) == 20_000:
                conn.execute(sa.insert(RECORDS), batch)
                batch.clear()
        if batch:
            conn.execute(sa.insert(RECORDS), batch)
    print(f"filled {args.records:,} records in {time.perf_counter() - t0:.1f} s")
    store = CatalogPolicyStore(engine)
    store.set_value(USED, args.records * 1000.0)
    policy = make_policy("lru", store, args.records * 1000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with store.transaction():
        victims = policy.make_room(100 * 1000, now=2e9)
    took = time.perf_counter() - t0
    print(f"lru make_room: {len(victims)} victims among {args.records:,} in {took * 1000:.1f} ms "
          f"({took / max(1, len(victims)) * 1000:.2f} ms per victim); peak RSS grew "
          f"{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024:.1f} MiB")
    engine.dispose()


if __name__ == "__main__":
    main()
