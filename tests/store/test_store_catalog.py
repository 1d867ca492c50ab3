"""Catalog repository against real SQLite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachetap.core.keys import url_filename
from cachetap.core.types import Sighting
from cachetap.store.catalog import Catalog, EntryView
from cachetap.core.lifecycle import EntryState, Event, IllegalTransition
from cachetap.testing.entries import walk
from cachetap.store.models import Hit

T0 = 1_700_000_000.0
DAY = 86_400.0


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def sighting(url: str = "http://example.com/files/big.iso", ts: float = T0, client: str = "10.0.0.7",
             host: str = "example.com", key: str | None = None) -> Sighting:
    return Sighting(ts=ts, client=client, client_port=50000, server="93.184.216.34", server_port=80,
                    method="GET", host=host, url=url, key=key or key_of(url), target="/files/big.iso")


def hit_rows(catalog: Catalog, key: str) -> list[tuple[float, str]]:
    with catalog.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(Hit.ts, Hit.client).where(Hit.key == key).order_by(Hit.ts))]


# ---- record_sightings ---------------------------------------------------------------------------

def test_first_sighting_creates_a_counting_entry(catalog):
    s = sighting()
    counts = catalog.record_sightings([s], window=DAY, now=T0 + 1)
    assert counts == {s.key: 1}
    entry = catalog.get(s.key)
    assert isinstance(entry, EntryView)
    assert (entry.state, entry.url, entry.host, entry.hits) == ("counting", s.url, "example.com", 1)
    assert entry.filename == url_filename(s.url) == "big.iso"
    assert entry.first_seen == entry.last_hit == T0
    assert (entry.attempts, entry.bytes_done, entry.speed) == (0, 0, 0)
    assert entry.created_at == entry.updated_at == T0 + 1
    assert hit_rows(catalog, s.key) == [(T0, "10.0.0.7")]


def test_later_sightings_add_hits_and_only_move_last_hit_forward(catalog):
    s = sighting()
    catalog.record_sightings([s, dataclasses.replace(s, ts=T0 + 10)], window=DAY, now=T0 + 10)
    # a late, out-of-order sighting counts but does not move last_hit back
    counts = catalog.record_sightings([dataclasses.replace(s, ts=T0 + 5, url=s.url + "?other")],
                                      window=DAY, now=T0 + 20)
    assert counts == {s.key: 3}
    entry = catalog.get(s.key)
    assert (entry.hits, entry.first_seen, entry.last_hit) == (3, T0, T0 + 10)
    assert entry.url == s.url  # the first URL stays
    assert entry.updated_at == T0 + 20


def test_counts_cover_only_the_window_with_both_ends_included(catalog):
    s = sighting()
    times = [T0 - 1, T0, T0 + 50, T0 + 100, T0 + 101]  # window [T0, T0+100]
    counts = catalog.record_sightings([dataclasses.replace(s, ts=t) for t in times], window=100, now=T0 + 100)
    assert counts == {s.key: 3}
    assert catalog.get(s.key).hits == 5  # the entry counts every request ever seen


def test_several_keys_in_one_batch_and_an_empty_batch(catalog):
    a, b = sighting("http://a.example/x.iso", host="a.example"), sighting("http://b.example/y.zip", host="b.example")
    counts = catalog.record_sightings([a, b, a, dataclasses.replace(a, ts=T0 - 2 * DAY)], window=DAY, now=T0)
    assert counts == {a.key: 2, b.key: 1}
    assert catalog.record_sightings([], window=DAY, now=T0) == {}


def test_sightings_as_dicts_from_the_broker(catalog):
    s = sighting()
    assert catalog.record_sightings([s.to_dict()], window=DAY, now=T0) == {s.key: 1}


HOSTILE = [
    "http://example.com/a'b\"c;--.iso",
    "http://example.com/'); DROP TABLE entries; --.iso",
    "http://example.com/back\\slash\\\\%00.iso",
    "http://example.com/ünïcødé/日本語/🎬.mkv?q=%27%22&x=1;2",
    "http://example.com/percent%25_underscore%_.iso",
]


@pytest.mark.parametrize("url", HOSTILE)
def test_hostile_values_round_trip_unchanged(catalog, url):
    host = "we'ird\";host\\ü🎬"
    client = "fe80::1%eth0'; --"
    s = sighting(url, host=host, client=client)
    catalog.record_sightings([s], window=DAY, now=T0)
    entry = catalog.get(s.key)
    assert (entry.url, entry.host, entry.filename) == (url, host, url_filename(url))
    assert hit_rows(catalog, s.key) == [(T0, client)]
    assert catalog.mark(s.key, Event.GIVE_UP, reason=url) and catalog.get(s.key).reason == url
    assert catalog.set_probe(s.key, {"etag": url[:255], "content_type": host, "last_modified": "'; --",
                                     "cache_control": "\\\"", "size": 1})
    entry = catalog.get(s.key)
    assert (entry.etag, entry.content_type, entry.last_modified, entry.cache_control) == (url[:255], host, "'; --", "\\\"")
    assert {e.key for e in catalog.entries()} == {s.key}  # the table is still there, with one row


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200))
def test_any_printable_unicode_url_round_trips(catalog, path):
    url = "http://example.com/" + path
    s = sighting(url, key=uuid.uuid4().hex)
    catalog.record_sightings([s], window=DAY, now=T0)
    assert catalog.get(s.key).url == url


def test_overlong_wire_values_are_clipped_to_their_columns(catalog):
    s = sighting(host="h" * 1000, client="c" * 100)
    catalog.record_sightings([s], window=DAY, now=T0)
    assert catalog.get(s.key).host == "h" * 255
    assert hit_rows(catalog, s.key) == [(T0, "c" * 45)]


@pytest.mark.parametrize("bad_key", ["", "ABCDEF0123456789ABCDEF0123456789", "0" * 31, "0" * 33,
                                     "'; DROP TABLE entries; --", "g" * 32, None])
def test_a_bad_key_rejects_the_whole_batch(catalog, bad_key):
    good = sighting()
    with pytest.raises(ValueError, match="not a cache key"):
        catalog.record_sightings([good, dataclasses.replace(good, key=bad_key)], window=DAY, now=T0)
    assert catalog.get(good.key) is None and hit_rows(catalog, good.key) == []
    assert catalog.get(bad_key) is None


# ---- claims -------------------------------------------------------------------------------------

@pytest.fixture
def key(catalog) -> str:
    s = sighting()
    catalog.record_sightings([s], window=DAY, now=T0)
    return s.key


def test_claim_moves_state_once(catalog, key):
    assert catalog.claim(key, ["counting"], "tok-1", now=T0 + 1, stale_after=600)
    entry = catalog.get(key)
    assert (entry.state, entry.claim_token, entry.claimed_at, entry.updated_at) == ("probing", "tok-1", T0 + 1, T0 + 1)
    assert not catalog.claim(key, ["counting"], "tok-2", now=T0 + 2, stale_after=600)
    assert catalog.get(key).claim_token == "tok-1"


def test_a_stale_claim_may_be_retaken_a_fresh_one_not(catalog, key):
    assert catalog.claim(key, ["counting"], "old", now=T0, stale_after=600)
    assert not catalog.claim(key, ["failed"], "new", now=T0 + 600, stale_after=600)
    assert catalog.claim(key, ["failed"], "new", now=T0 + 601, stale_after=600)
    assert catalog.get(key).claim_token == "new"
    # the vanished worker's token no longer matches
    assert not catalog.mark(key, Event.PROBE_ACCEPTED, token="old")
    assert catalog.mark(key, Event.PROBE_ACCEPTED, token="new")
    assert catalog.get(key).state == "queued"


def test_claim_of_a_missing_key_or_wrong_state(catalog, key):
    assert not catalog.claim(key_of("missing"), ["counting"], "t", now=T0, stale_after=1)
    assert not catalog.claim(key, ["rejected", "failed"], "t", now=T0, stale_after=1)
    assert catalog.get(key).state == "counting"


@pytest.mark.parametrize("states", [["nope"], "counting", [], ["queued"], ["ready"], ["counting", "downloading"]])
def test_claim_from_a_state_the_table_does_not_claim_from_raises_before_writing(catalog, key, states):
    # a bare string is one state: counting may be claimed, but the claim must then go through
    if states == "counting":
        assert catalog.claim(key, states, "t", now=T0, stale_after=1)
        return
    with pytest.raises(IllegalTransition):
        catalog.claim(key, states, "t", now=T0, stale_after=1)
    assert catalog.get(key).state == "counting"


def test_claim_rejects_a_bad_key(catalog):
    with pytest.raises(ValueError):
        catalog.claim("x'; --", ["counting"], "t", now=T0, stale_after=1)


# ---- mark, set_fields, set_probe ------------------------------------------------------------------

def test_mark_applies_the_event_and_sets_reason_and_fields(catalog, key):
    catalog.claim(key, ["counting"], "p", now=T0, stale_after=600)
    assert catalog.mark(key, Event.PROBE_REJECTED, reason="too_small", size=10, attempts=2)
    entry = catalog.get(key)
    assert (entry.state, entry.reason, entry.size, entry.attempts) == ("rejected", "too_small", 10, 2)
    assert catalog.mark(key, Event.CLAIM)
    assert catalog.get(key).reason is None  # the reason belongs to the state it explained
    assert not catalog.mark(key_of("missing"), Event.CLAIM)


@pytest.mark.parametrize("state,event", [("counting", Event.PUBLISH), ("counting", Event.START),
                                         ("ready", Event.PUBLISH), ("queued", Event.PROGRESS),
                                         ("failed", Event.PROBE_ACCEPTED), ("rejected", Event.RELEASE)])
def test_an_illegal_move_raises_and_writes_nothing(catalog, key, state, event):
    walk(catalog, key, state)
    before = catalog.get(key)
    with pytest.raises(IllegalTransition):
        catalog.mark(key, event, state, blob="ab" * 32)
    with pytest.raises(IllegalTransition):
        catalog.mark(key, event, [state, "downloading"])
    assert catalog.get(key) == before


def test_a_move_from_a_state_the_row_has_left_changes_nothing(catalog, key):
    # PUBLISH is legal from downloading, but the row is only queued: the database refuses the write
    walk(catalog, key, "queued")
    assert not catalog.mark(key, Event.PUBLISH, blob="ab" * 32)
    assert catalog.get(key).state == "queued" and catalog.get(key).blob is None
    # GIVE_UP may start anywhere: with no state named, the table's every source is allowed
    assert catalog.mark(key, Event.GIVE_UP, reason="broker down")
    assert (catalog.get(key).state, catalog.get(key).reason) == ("failed", "broker down")


def test_mark_with_a_token_needs_the_claim(catalog, key):
    walk(catalog, key, "downloading", claim_token="mine")
    assert not catalog.mark(key, Event.PUBLISH, token="theirs", blob="ab" * 32)
    assert catalog.get(key).state == "downloading" and catalog.get(key).blob is None
    assert catalog.mark(key, Event.PUBLISH, "downloading", token="mine", blob="ab" * 32, stored_size=5,
                        published_at=T0 + 9)
    entry = catalog.get(key)
    assert (entry.state, entry.blob, entry.stored_size, entry.published_at) == ("ready", "ab" * 32, 5, T0 + 9)


def test_set_fields_never_moves_the_state(catalog, key):
    walk(catalog, key, "queued", claim_token="q")
    assert not catalog.set_fields(key, ["downloading"], token="q", task_id="t1")
    assert not catalog.set_fields(key, ["queued"], token="other", task_id="t1")
    assert catalog.set_fields(key, ["queued", "downloading"], token="q", task_id="t1")
    assert (catalog.get(key).state, catalog.get(key).task_id) == ("queued", "t1")
    with pytest.raises(TypeError, match="unknown entry fields"):
        catalog.set_fields(key, ["queued"], state="ready")


@pytest.mark.parametrize("fields", [{"nonsense": 1}, {"id": 5}, {"Reason": "x"}, {"url; DROP TABLE entries": 1},
                                    {"state": "ready"}])
def test_mark_rejects_unknown_or_reserved_fields(catalog, key, fields):
    with pytest.raises(TypeError, match="unknown entry fields"):
        catalog.mark(key, Event.CLAIM, **fields)
    assert catalog.get(key).state == "counting"


def test_mark_rejects_unknown_state(catalog, key):
    with pytest.raises(IllegalTransition):
        catalog.mark(key, Event.CLAIM, "done")


@dataclasses.dataclass
class ProbeLike:
    status: int = 200
    size: int | None = 5 << 30
    content_type: str | None = "application/x-iso9660-image"
    etag: str | None = '"abc"'
    last_modified: str | None = "Tue, 15 Nov 1994 08:12:31 GMT"
    cache_control: str | None = "max-age=3600"
    accept_ranges: bool = True


def test_set_probe_from_an_object_or_a_mapping(catalog, key):
    assert catalog.set_probe(key, ProbeLike())
    entry = catalog.get(key)
    assert (entry.size, entry.content_type, entry.etag, entry.last_modified, entry.cache_control) == (
        5 << 30, "application/x-iso9660-image", '"abc"', "Tue, 15 Nov 1994 08:12:31 GMT", "max-age=3600")
    assert entry.state == "counting"
    catalog.claim(key, ["counting"], "p", now=T0, stale_after=600)
    assert catalog.set_probe(key, {"size": None, "etag": None}, Event.PROBE_ACCEPTED)
    entry = catalog.get(key)
    assert (entry.size, entry.etag, entry.content_type, entry.state) == (None, None, None, "queued")


def test_set_probe_drops_overlong_validators_and_negative_sizes(catalog, key):
    assert catalog.set_probe(key, ProbeLike(etag='"' + "e" * 300 + '"', last_modified="x" * 65, size=-1,
                                            cache_control="c" * 256, content_type="t" * 255))
    entry = catalog.get(key)
    assert (entry.etag, entry.last_modified, entry.size, entry.cache_control) == (None, None, None, None)
    assert entry.content_type == "t" * 255


def test_set_probe_with_state_and_token(catalog, key):
    assert catalog.claim(key, ["counting"], "p1", now=T0, stale_after=600)
    assert not catalog.set_probe(key, ProbeLike(), Event.PROBE_REJECTED, reason="x", token="p2")
    assert catalog.set_probe(key, ProbeLike(), Event.PROBE_REJECTED, reason="too_large", token="p1")
    assert (catalog.get(key).state, catalog.get(key).reason) == ("rejected", "too_large")
    # a second verdict on a settled probe: only a probing row may take one, so nothing is written
    assert not catalog.set_probe(key, ProbeLike(), Event.PROBE_ACCEPTED, token="p1")
    assert catalog.get(key).state == "rejected"


# ---- reads, housekeeping --------------------------------------------------------------------------

def test_get_is_a_frozen_snapshot_and_tolerates_bad_keys(catalog, key):
    entry = catalog.get(key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.state = "ready"  # type: ignore[misc]
    walk(catalog, key, "ready")
    assert entry.state == "counting" and catalog.get(key).state == "ready"
    for bad in (key_of("nothing"), "", "x" * 32, "'; --", None, 5):
        assert catalog.get(bad) is None


def test_entries_newest_hit_first_with_limit_and_state(catalog):
    made = [sighting(f"http://example.com/{i}.iso", ts=T0 + i) for i in range(5)]
    catalog.record_sightings(made, window=DAY, now=T0 + 10)
    walk(catalog, made[1].key, "ready")
    assert [e.key for e in catalog.entries()] == [s.key for s in reversed(made)]
    assert [e.key for e in catalog.entries(limit=2)] == [made[4].key, made[3].key]
    assert [e.key for e in catalog.entries(state="ready")] == [made[1].key]
    assert catalog.entries(state="failed") == []
    with pytest.raises(ValueError):
        catalog.entries(state="' OR 1=1 --")


def test_counts_by_state_lists_every_state(catalog):
    assert catalog.counts_by_state() == dict.fromkeys(sorted(s.value for s in EntryState), 0)
    made = [sighting(f"http://example.com/{i}.iso") for i in range(3)]
    catalog.record_sightings(made, window=DAY, now=T0)
    walk(catalog, made[0].key, "ready")
    counts = catalog.counts_by_state()
    assert (counts["counting"], counts["ready"], counts["failed"]) == (2, 1, 0)


def test_prune_hits_deletes_only_older_rows(catalog):
    s = sighting()
    catalog.record_sightings([dataclasses.replace(s, ts=T0 + i) for i in range(10)], window=DAY, now=T0 + 10)
    assert catalog.prune_hits(before=T0 + 4) == 4
    assert [ts for ts, _ in hit_rows(catalog, s.key)] == [T0 + i for i in range(4, 10)]
    assert catalog.prune_hits(before=T0 + 4) == 0
    assert catalog.get(s.key).hits == 10  # the total stays on the entry


def test_stale_claims(catalog):
    made = [sighting(f"http://example.com/{i}.iso") for i in range(4)]
    catalog.record_sightings(made, window=DAY, now=T0)
    walk(catalog, made[0].key, "downloading", claim_token="a", claimed_at=T0)
    walk(catalog, made[1].key, "downloading", claim_token="b", claimed_at=T0 + 500)
    catalog.claim(made[2].key, ["counting"], "c", now=T0, stale_after=600)
    found = catalog.stale_claims(now=T0 + 700, stale_after=600, states=["downloading"])
    assert [e.key for e in found] == [made[0].key]
    both = catalog.stale_claims(now=T0 + 700, stale_after=600, states=["downloading", "probing"])
    assert {e.key for e in both} == {made[0].key, made[2].key}
    assert catalog.stale_claims(now=T0 + 700, stale_after=600, states=[]) == []


def test_remove_deletes_entry_and_hits(catalog, key):
    other = sighting("http://example.com/keep.iso")
    catalog.record_sightings([other], window=DAY, now=T0)
    assert catalog.remove(key)
    assert catalog.get(key) is None and hit_rows(catalog, key) == []
    assert not catalog.remove(key)
    assert catalog.get(other.key) is not None and len(hit_rows(catalog, other.key)) == 1
    with pytest.raises(ValueError):
        catalog.remove("'; --")


def test_add_hits_from_the_cache_server(catalog, key):
    missing = key_of("missing")
    assert catalog.add_hits({key: 3, missing: 2, key_of("zero"): 0}, now=T0 + 50) == 1
    entry = catalog.get(key)
    assert (entry.hits, entry.last_hit) == (4, T0 + 50)
    catalog.add_hits({key: 1}, now=T0 - 50)  # a late flush never moves last_hit back
    assert catalog.get(key).last_hit == T0 + 50
    assert catalog.get(missing) is None


def test_one_revalidation_per_key_at_a_time(catalog, key):
    walk(catalog, key, "ready", blob="b" * 64, expires_at=T0 + 10)
    assert catalog.expired_among([key], T0 + 5) == []
    assert not catalog.begin_revalidation(key, "t1", now=T0 + 5, lease=60)  # still fresh
    assert [e.key for e in catalog.expired_among([key, key_of("other")], T0 + 20)] == [key]
    assert catalog.begin_revalidation(key, "t1", now=T0 + 20, lease=60)
    assert not catalog.begin_revalidation(key, "t2", now=T0 + 30, lease=60)  # t1 is on it
    assert catalog.begin_revalidation(key, "t2", now=T0 + 81, lease=60)    # t1's worker vanished
    assert not catalog.end_revalidation(key, "t1", "late")                   # superseded: no effect
    assert catalog.end_revalidation(key, "t2", "revalidation: HTTP 503")
    row = catalog.get(key)
    assert row.claim_token is None and row.reason == "revalidation: HTTP 503" and row.state == "ready"
    assert catalog.begin_revalidation(key, "t3", now=T0 + 82, lease=60)
    assert catalog.refresh(key, "b" * 64, T0 + 1000)
    row = catalog.get(key)
    assert row.expires_at == T0 + 1000 and row.claim_token is None and row.reason is None


def test_claims_held_on_a_host_and_retake_from_a_dead_holder(catalog, key):
    walk(catalog, key, "downloading", claim_token="old", claimed_at=T0, claimed_by="host-a:123")
    assert [e.key for e in catalog.claims_held_on("host-a", ["downloading"])] == [key]
    assert catalog.claims_held_on("host-b", ["downloading"]) == []
    assert catalog.claims_held_on("host-a", ["queued"]) == []
    assert catalog.retake(key, "old", "new", now=T0 + 1)
    assert not catalog.retake(key, "old", "newer", now=T0 + 2)  # one winner
    entry = catalog.get(key)
    assert (entry.claim_token, entry.claimed_at, entry.claimed_by) == ("new", T0 + 1, None)
