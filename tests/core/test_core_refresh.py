"""Freshness rules for big files: minimum and maximum freshness by host and extension."""

from __future__ import annotations

from email.utils import formatdate

from cachetap.core.refresh import RefreshPolicy, RefreshRule, extension_of, rules_from

NOW = 1_800_000_000.0
DAY = 86_400.0


def policy(rules=(), default_min=DAY, **kw) -> RefreshPolicy:
    return RefreshPolicy(rules=tuple(rules), default_min_ttl=default_min, big_extensions=frozenset({"iso", "zip"}),
                         default_ttl=kw.get("default_ttl", 7 * DAY), max_ttl=kw.get("max_ttl", 90 * DAY))


def lm(seconds_ago: float) -> dict[str, str]:
    return {"Last-Modified": formatdate(NOW - seconds_ago, usegmt=True)}


def test_a_file_written_just_now_stays_fresh_a_day_not_a_fraction_of_a_second():
    # RFC 9111's heuristic gives 10% of 3 s: 0.3 s. The default minimum for big-file types lifts it.
    assert policy(default_min=0).fresh_until(NOW, lm(3), "cdn.test", "/patch.zip") == NOW + 0.3
    assert policy().fresh_until(NOW, lm(3), "cdn.test", "/patch.zip") == NOW + DAY


def test_the_default_minimum_is_only_for_big_file_types():
    assert policy().fresh_until(NOW, lm(10), "cdn.test", "/index.html") == NOW + 1.0


def test_an_old_file_keeps_its_longer_heuristic_freshness():
    assert policy().fresh_until(NOW, lm(100 * DAY), "cdn.test", "/a.iso") == NOW + 10 * DAY


def test_explicit_origin_lifetimes_are_obeyed_unless_a_rule_says_immutable():
    headers = {**lm(3), "Cache-Control": "max-age=60"}
    assert policy().fresh_until(NOW, headers, "cdn.test", "/a.iso") == NOW + 60
    assert policy().fresh_until(NOW, {"Cache-Control": "no-cache"}, "cdn.test", "/a.iso") == NOW
    immutable = RefreshRule(host="*.steam.test", min_ttl=30 * DAY, ignore_cache_control=True)
    p = policy([immutable])
    assert p.fresh_until(NOW, headers, "cdn.steam.test", "/a.iso") == NOW + 30 * DAY
    assert p.fresh_until(NOW, {"Cache-Control": "no-store", "Expires": "0"}, "cdn.steam.test", "/x") == NOW + 30 * DAY
    assert p.fresh_until(NOW, headers, "other.test", "/a.iso") == NOW + 60


def test_max_ttl_of_a_rule_caps_everything_and_the_minimum():
    rule = RefreshRule(extensions=("iso",), min_ttl=10 * DAY, max_ttl=2 * DAY)
    assert policy([rule]).fresh_until(NOW, lm(3), "h", "/a.iso") == NOW + 2 * DAY
    assert policy([rule]).fresh_until(NOW, {"Cache-Control": "max-age=99999999"}, "h", "/a.iso") == NOW + 2 * DAY


def test_first_matching_rule_wins_and_extensions_match_case_insensitively():
    strict = RefreshRule(host="strict.test", min_ttl=0)
    loose = RefreshRule(extensions=("iso",), min_ttl=5 * DAY)
    p = policy([strict, loose])
    assert p.rule_for("strict.test", "/A.ISO") is strict
    assert p.rule_for("STRICT.test", "/a.iso") is strict
    assert p.rule_for("other.test", "/A.ISO") is loose
    assert p.fresh_until(NOW, lm(3), "strict.test", "/a.iso") == NOW + 0.3


def test_extension_of_ignores_query_and_directories():
    assert extension_of("/dir.v2/file") == ""
    assert extension_of("/a/b.tar.GZ?x=1.zip") == "gz"
    assert extension_of("") == ""


def test_rules_from_settings_shaped_mappings():
    (rule,) = rules_from([{"host": "*.x", "extensions": [".ZIP"], "min_ttl": 5, "max_ttl": None,
                           "ignore_cache_control": True}])
    assert rule == RefreshRule(host="*.x", extensions=("zip",), min_ttl=5.0, max_ttl=None, ignore_cache_control=True)
