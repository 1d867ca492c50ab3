"""The console's figures in the catalog: per-entry bytes and the minute/hour time series."""

from __future__ import annotations

import hashlib

from cachetap.core.lifecycle import EntryState
from cachetap.core.types import Sighting
from cachetap.store.stats import HOUR, MINUTE, Stats
from cachetap.testing.entries import walk

T0 = 1_700_000_000.0 // HOUR * HOUR  # an hour boundary


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def seen(catalog, path: str, host: str = "example.com", ts: float = T0) -> str:
    url = f"http://{host}{path}"
    key = key_of(url)
    catalog.record_sightings([Sighting(ts=ts, client="10.0.0.7", client_port=1, server="192.0.2.1", server_port=80,
                                       method="GET", host=host, url=url, key=key)], window=3600, now=ts)
    return key


def test_served_fetched_and_missed_bytes_reach_the_entry_and_both_buckets(catalog):
    stats = Stats(catalog)
    ready, probed, unknown = seen(catalog, "/a.iso"), seen(catalog, "/b.iso", host="other.org"), seen(catalog, "/c.iso")
    catalog.set_probe(ready, {"size": 1000})
    walk(catalog, ready, EntryState.READY)
    catalog.set_probe(probed, {"size": 300})
    walk(catalog, probed, EntryState.REJECTED, reason="too_small")
    assert stats.count_requests({ready: 2, probed: 3, unknown: 1}, T0 + 10) == 900  # only the probed, not ready one
    stats.count_fetched(ready, 1000, T0 + 20)
    assert catalog.add_hits({ready: 3}, T0 + 70, served_bytes={ready: 2500}) == 1
    entry = catalog.get(ready)
    assert (entry.served_bytes, entry.fetched_bytes, entry.missed_bytes) == (2500, 1000, 0)
    assert catalog.get(probed).missed_bytes == 900
    minutes = stats.series(MINUTE, T0)
    assert [(p["bucket"], p["requests"], p["missed_bytes"], p["fetched_bytes"], p["served_bytes"]) for p in minutes] == [
        (T0, 6, 900, 1000, 0), (T0 + 60, 0, 0, 0, 2500)]
    assert stats.totals(T0) == {"requests": 6, "served_requests": 3, "served_bytes": 2500, "fetched_bytes": 1000,
                                "missed_bytes": 900}
    assert stats.totals(T0 + HOUR)["served_bytes"] == 0
    assert stats.rate("requests", 120, now=T0 + 130) == 6 / 120
    by_saved, by_missed = stats.hosts("saved"), stats.hosts("missed")
    assert [(h["host"], h["saved_bytes"]) for h in by_saved] == [("example.com", 1500), ("other.org", 0)]
    assert [(h["host"], h["missed_bytes"]) for h in by_missed] == [("other.org", 900), ("example.com", 0)]


def test_gauges_are_sampled_and_old_minutes_pruned_while_hours_stay(catalog):
    stats = Stats(catalog)
    key = seen(catalog, "/a.iso")
    walk(catalog, key, EntryState.READY, stored_size=4096)
    assert stats.sample(T0, disk_free=10_000) == {"objects": 1, "stored_bytes": 4096, "disk_free": 10_000}
    assert stats.latest_gauges()["objects"] == 1 and stats.latest_gauges()["bucket"] == T0
    catalog.add_hits({key: 1}, T0 + 5, served_bytes={key: 10})
    assert stats.prune(T0 + 3 * 86_400) == 1
    assert stats.series(MINUTE, 0) == [] and stats.series(HOUR, 0)[0]["served_bytes"] == 10


def test_find_searches_url_and_host_literally_and_sorts(catalog):
    stats = Stats(catalog)
    big, small = seen(catalog, "/big_100%.iso", ts=T0), seen(catalog, "/small.iso", host="cdn.test", ts=T0 + 1)
    catalog.set_probe(big, {"size": 5000})
    catalog.set_probe(small, {"size": 10})
    catalog.add_hits({small: 4}, T0 + 2, served_bytes={small: 40})
    assert [e.key for e in stats.find("100%")] == [big]
    assert stats.find("b_g") == [] and [e.key for e in stats.find("g_1")] == [big]  # LIKE wildcards are literal
    assert [e.key for e in stats.find("CDN.test")] == [small]
    assert [e.key for e in stats.find(sort="size")] == [big, small]
    assert [e.key for e in stats.find(sort="saved")] == [small, big]
    assert [e.key for e in stats.find(sort="hits")] == [small, big]
    assert [e.key for e in stats.find(state=EntryState.COUNTING, sort="last_hit")] == [small, big]
