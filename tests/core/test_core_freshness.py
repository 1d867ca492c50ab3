"""core.freshness: RFC 9111 freshness for a shared cache, revalidation headers and outcomes."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from cachetap.core.semantics import format_http_date, parse_http_date

from cachetap.core.freshness import (expires_at, parse_cache_control, revalidation_headers,
                                     revalidation_outcome)

NOW = 1_700_000_000.0
DAY = 86_400.0
DEFAULT, MAX = 7 * DAY, 90 * DAY


def date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)


def fresh_for(headers: dict, now: float = NOW) -> float:
    return expires_at(now, headers, DEFAULT, MAX) - now


# ---- precedence ----------------------------------------------------------------------------------

def test_no_information_uses_default_ttl():
    assert fresh_for({}) == DEFAULT


def test_s_maxage_wins_over_max_age_and_expires():
    h = {"Cache-Control": "max-age=60, s-maxage=120", "Expires": date(NOW + 3600), "Date": date(NOW)}
    assert fresh_for(h) == 120


def test_max_age_wins_over_expires():
    assert fresh_for({"Cache-Control": "max-age=60", "Expires": date(NOW + 3600)}) == 60


def test_expires_against_date_is_skew_free():
    # The origin's clock is an hour ahead of ours: Expires - Date is still the lifetime.
    origin_now = NOW + 3600
    h = {"Date": date(origin_now), "Expires": date(origin_now + 600)}
    assert fresh_for(h) == 600


def test_expires_without_date_is_against_now():
    assert fresh_for({"Expires": date(NOW + 600)}) == 600


def test_expires_in_the_past_expires_now():
    assert fresh_for({"Expires": date(NOW - 600), "Date": date(NOW)}) == 0


@pytest.mark.parametrize("value", ["0", "-1", "yesterday", "", "Thu, 99 Foo 2023 99:99:99 GMT"])
def test_invalid_expires_means_already_expired(value):
    assert fresh_for({"Expires": value}) == 0


def test_age_and_date_are_subtracted_from_explicit_lifetimes():
    assert fresh_for({"Cache-Control": "max-age=600", "Age": "100"}) == 500
    assert fresh_for({"Cache-Control": "max-age=600", "Date": date(NOW - 200)}) == 400
    assert fresh_for({"Cache-Control": "max-age=600", "Age": "9999"}) == 0


def test_date_in_the_future_is_no_negative_age():
    assert fresh_for({"Cache-Control": "max-age=600", "Date": date(NOW + 5000)}) == 600


# ---- heuristic -----------------------------------------------------------------------------------

def test_heuristic_is_ten_percent_of_time_since_last_modified():
    h = {"Date": date(NOW), "Last-Modified": date(NOW - 10 * DAY)}
    assert fresh_for(h) == pytest.approx(DAY)


def test_heuristic_without_date_uses_now():
    assert fresh_for({"Last-Modified": date(NOW - 10 * DAY)}) == pytest.approx(DAY)


def test_heuristic_is_capped_by_max_ttl():
    assert fresh_for({"Last-Modified": date(NOW - 5000 * DAY)}) == MAX


def test_last_modified_in_the_future_falls_back_to_default():
    assert fresh_for({"Last-Modified": date(NOW + DAY)}) == DEFAULT
    assert fresh_for({"Last-Modified": "not a date"}) == DEFAULT


# ---- caps and must-revalidate cases --------------------------------------------------------------

def test_never_beyond_max_ttl():
    assert fresh_for({"Cache-Control": "max-age=999999999"}) == MAX
    assert fresh_for({"Expires": date(NOW + 1000 * DAY)}) == MAX
    assert fresh_for({}, NOW) == DEFAULT
    assert expires_at(NOW, {}, default_ttl=MAX * 2, max_ttl=MAX) == NOW + MAX


def test_overflowing_delta_seconds_is_capped_not_an_error():
    assert fresh_for({"Cache-Control": "max-age=" + "9" * 5000}) == MAX


@pytest.mark.parametrize("cc", ["no-cache", "No-Cache, max-age=600", 'no-cache="Set-Cookie", max-age=600',
                                "no-store", "private, max-age=60", "max-age=60, max-age=120"])
def test_must_revalidate_now(cc):
    assert fresh_for({"Cache-Control": cc, "Expires": date(NOW + 600)}) == 0


def test_repeated_identical_directive_is_fine():
    assert fresh_for({"Cache-Control": "max-age=60, max-age=60"}) == 60


@pytest.mark.parametrize("cc", ["max-age=abc", "max-age=-5", "max-age=", "max-age", "max-age=1.5",
                                "max-age=٣٣", ",,,=,", "s-maxage=x"])
def test_malformed_max_age_is_ignored(cc):
    # Falls through to the next source: here Expires.
    assert fresh_for({"Cache-Control": cc, "Expires": date(NOW + 600)}) == 600


def test_malformed_s_maxage_falls_back_to_max_age():
    assert fresh_for({"Cache-Control": "s-maxage=bad, max-age=30"}) == 30


def test_header_names_are_case_insensitive_and_lists_are_joined():
    assert fresh_for({"CACHE-CONTROL": "public, MAX-AGE=42"}) == 42
    assert fresh_for({"cache-control": ["public", "max-age=42"]}) == 42


def test_quoted_arguments_keep_their_commas():
    assert parse_cache_control('no-cache="a, b", max-age="30"') == {"no-cache": "a, b", "max-age": "30"}
    assert fresh_for({"Cache-Control": 'max-age="30"'}) == 30
    assert parse_cache_control('x="unterminated, max-age=5') == {"x": "unterminated, max-age=5"}


def test_http_date_forms():
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date("Sun Nov  6 08:49:37 1994") is None  # asctime has no zone: not trusted
    assert parse_http_date(None) is None and parse_http_date("  ") is None
    assert parse_http_date(format_http_date(784111777)) == 784111777


# ---- revalidation --------------------------------------------------------------------------------

def test_revalidation_headers():
    lm = date(NOW)
    assert revalidation_headers('"v1"', lm) == {"If-None-Match": '"v1"', "If-Modified-Since": lm}
    assert revalidation_headers('W/"v1"', None) == {"If-None-Match": 'W/"v1"'}
    assert revalidation_headers(None, lm) == {"If-Modified-Since": lm}
    assert revalidation_headers(None, None) == {}
    # Invalid validators are left out (a bare token, an injected line, a non-date).
    assert revalidation_headers("v1", "yesterday") == {}
    assert revalidation_headers('"a"\r\nX-Evil: 1', None) == {}


@pytest.mark.parametrize("status,old,new,old_size,new_size,expected", [
    (304, '"a"', None, 10, None, "fresh"),
    (200, '"a"', '"a"', 10, 10, "fresh"),
    (200, '"a"', 'W/"a"', 10, None, "fresh"),   # weak comparison
    (206, '"a"', '"a"', 10, 10, "fresh"),       # a Range GET answered
    (200, '"a"', '"b"', 10, 10, "changed"),
    (200, '"a"', '"a"', 10, 11, "changed"),     # same tag, other size: the origin lies; refetch
    (200, '"a"', None, 10, 10, "changed"),      # the validator vanished: cannot show it unchanged
    (200, None, None, 10, 10, "changed"),       # nothing to compare
    (404, '"a"', None, 10, None, "gone"),
    (410, None, None, None, None, "gone"),
    (500, '"a"', '"a"', 10, 10, "error"),
    (503, '"a"', None, 10, None, "error"),
    (403, '"a"', None, 10, None, "error"),
    (301, '"a"', None, 10, None, "error"),
    (None, '"a"', None, 10, None, "error"),     # no answer at all
])
def test_revalidation_outcome(status, old, new, old_size, new_size, expected):
    assert revalidation_outcome(status, old, new, old_size, new_size) == expected


def test_outcome_falls_back_to_last_modified_without_etags():
    lm = date(NOW)
    assert revalidation_outcome(200, None, None, 10, 10, lm, lm) == "fresh"
    assert revalidation_outcome(200, None, None, 10, 10, lm, date(NOW + 1)) == "changed"
    assert revalidation_outcome(200, None, None, 10, 10, "junk", "junk") == "changed"
