"""Many processes x threads at once against one catalog: the database must pick exactly one winner."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import sqlalchemy as sa

from cachetap.core.types import Sighting
from cachetap.store.catalog import Catalog
from cachetap.store.db import make_engine, upgrade
from cachetap.store.models import Entry, Hit

PROCESSES = 3
THREADS = 4
BATCHES = 4
PER_BATCH = 3
KEY = "0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210"
T0 = 1_700_000_000.0
WAIT = 180  # seconds a barrier waits: generous, a loaded machine only makes the test slower


def _sighting(key: str, ts: float, client: str) -> Sighting:
    return Sighting(ts=ts, client=client, client_port=1, server="192.0.2.1", server_port=80, method="GET",
                    host="example.com", url=f"http://example.com/{key}.iso", key=key, target=f"/{key}.iso")


def _run_in_threads(url: str, start: multiprocessing.Barrier, results: multiprocessing.Queue, action) -> None:
    """Open a pool of connections, wait for every process, then let all threads loose at once."""
    try:
        engine = make_engine(url, pool_size=THREADS)
        catalog = Catalog(engine)
        with engine.connect():
            pass  # connected before the barrier, so the start is as simultaneous as we can make it
        outcomes: list = [None] * THREADS
        go = threading.Barrier(THREADS)

        def thread_main(i: int) -> None:
            try:
                go.wait(timeout=WAIT)
                outcomes[i] = action(catalog, i)
            except Exception as exc:
                outcomes[i] = f"{type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(THREADS)]
        start.wait(timeout=WAIT)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        engine.dispose()
        results.put(outcomes)
    except Exception as exc:
        results.put([f"{type(exc).__name__}: {exc}"])


def _claim(catalog: Catalog, _i: int) -> bool:
    return catalog.claim(KEY, ["counting"], uuid.uuid4().hex, now=T0 + 10, stale_after=600)


def _record(catalog: Catalog, i: int) -> bool:
    for b in range(BATCHES):
        batch = [_sighting(KEY, T0 + b, f"10.0.{i}.{n}") for n in range(PER_BATCH)]
        batch.append(_sighting(OTHER_KEY, T0 + b, f"10.1.{i}.{b}"))
        counts = catalog.record_sightings(batch, window=3600, now=T0 + BATCHES)
        # at least this batch's own hits are visible in its own transaction
        if counts[KEY] < PER_BATCH or counts[OTHER_KEY] < 1:
            return False
    return True


def _race(url: str, action) -> list:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_run_in_threads, args=(url, start, results, action)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [o for _ in procs for o in results.get(timeout=2 * WAIT)]
    for p in procs:
        p.join(timeout=WAIT)
    return outcomes


def test_exactly_one_claim_wins_across_processes_and_threads(catalog_url):
    upgrade(catalog_url)
    engine = make_engine(catalog_url)
    try:
        Catalog(engine).record_sightings([_sighting(KEY, T0, "10.0.0.1")], window=60, now=T0)
        outcomes = _race(catalog_url, _claim)
        assert len(outcomes) == PROCESSES * THREADS
        assert [o for o in outcomes if not isinstance(o, bool)] == []  # no errors
        assert outcomes.count(True) == 1
        entry = Catalog(engine).get(KEY)
        assert entry.state == "probing" and entry.claimed_at == T0 + 10
    finally:
        engine.dispose()


def test_concurrent_sightings_of_a_new_key_make_one_row_and_count_every_hit(catalog_url):
    upgrade(catalog_url)
    outcomes = _race(catalog_url, _record)
    assert outcomes == [True] * (PROCESSES * THREADS)
    engine = make_engine(catalog_url)
    try:
        workers = PROCESSES * THREADS
        with engine.connect() as conn:
            rows = conn.execute(sa.select(Entry.key, Entry.hits, Entry.first_seen, Entry.last_hit)
                                .order_by(Entry.key)).all()
            hit_rows = dict(conn.execute(sa.select(Hit.key, sa.func.count()).group_by(Hit.key)).all())
        assert [tuple(r) for r in rows] == [
            (KEY, workers * BATCHES * PER_BATCH, T0, T0 + BATCHES - 1),
            (OTHER_KEY, workers * BATCHES, T0, T0 + BATCHES - 1),
        ]
        assert hit_rows == {KEY: workers * BATCHES * PER_BATCH, OTHER_KEY: workers * BATCHES}
    finally:
        engine.dispose()
