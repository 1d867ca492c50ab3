"""Scope rules: which requests count and which probed objects are worth caching."""

from __future__ import annotations

import ipaddress

import pytest

from cachetap.core.admission import ProbeResult
from cachetap.core.http import parse_heads
from cachetap.core.keys import canonical_url
from cachetap.core.rules import Rules
from cachetap.core.types import Ignore, RequestHead
from cachetap.settings import Settings

GET = RequestHead(method="GET", target="/f.iso", version="HTTP/1.1", host="example.com")


def reason(decision: Ignore | None) -> str | None:
    return None if decision is None else decision.reason


def rules(**values) -> Rules:
    defaults = dict(extensions=["iso", "zip"], content_types=["video/", "application/octet-stream"],
                    min_size=1000, max_size=10_000)
    return Rules(**{**defaults, **values})


# ---- consider ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["HEAD", "POST", "get", "PUT"])
def test_only_get_counts(method):
    head = RequestHead(method=method, target="/f.iso", version="HTTP/1.1", host="h")
    assert reason(rules().consider(head, "10.0.0.1", "http://h/f.iso")) == "method"


@pytest.mark.parametrize("url, expected", [
    ("http://h/f.iso", None),
    ("http://h/dir/F.ISO", None),
    ("http://h/f.iso?download=1", None),
    ("http://h/a.tar.zip", None),
    ("http://h/f.html", "extension"),
    ("http://h/f", "extension"),
    ("http://h/f.iso/", "extension"),             # a directory, not a file
    ("http://h/f.iso.html", "extension"),
    ("http://h/get?file=f.iso", "extension"),    # the query is not the path
    ("http://h/iso", "extension"),
])
def test_extension_from_canonical_path(url, expected):
    assert reason(rules().consider(GET, "10.0.0.1", url)) == expected


def test_empty_extension_list_accepts_every_path():
    assert rules(extensions=[]).consider(GET, "10.0.0.1", "http://h/no-extension") is None


def test_extension_list_is_normalised():
    assert rules(extensions=[".ISO", " "]).consider(GET, "10.0.0.1", "http://h/f.iso") is None


def test_host_deny_wins_over_allow():
    r = rules(host_allow=["*.example.com"], host_deny=["bad.example.com"])
    assert reason(r.consider(GET, "10.0.0.1", "http://bad.example.com/f.iso")) == "host_denied"
    assert reason(r.consider(GET, "10.0.0.1", "http://good.example.com/f.iso")) is None
    assert reason(r.consider(GET, "10.0.0.1", "http://example.org/f.iso")) == "host_not_allowed"


def test_host_globs_are_case_insensitive_whole_match_and_ignore_port():
    r = rules(host_allow=["*.Example.COM.", "exact.org"])
    assert r.consider(GET, "10.0.0.1", "http://a.example.com:8080/f.iso") is None
    assert reason(r.consider(GET, "10.0.0.1", "http://exact.org.evil.net/f.iso")) == "host_not_allowed"
    assert reason(r.consider(GET, "10.0.0.1", "http://notexact.org/f.iso")) == "host_not_allowed"
    assert r.consider(GET, "10.0.0.1", "http://exact.org/f.iso") is None


def test_glob_metacharacters_in_hosts_do_not_break_matching():
    r = rules(host_deny=["[a-c].example.com", "x?.net"])
    assert reason(r.consider(GET, "10.0.0.1", "http://b.example.com/f.iso")) == "host_denied"
    assert reason(r.consider(GET, "10.0.0.1", "http://x1.net/f.iso")) == "host_denied"
    assert r.consider(GET, "10.0.0.1", "http://d.example.com/f.iso") is None


@pytest.mark.parametrize("client, expected", [
    ("10.1.2.3", None),
    ("192.168.1.200", None),
    ("::ffff:10.1.2.3", None),           # IPv4-mapped IPv6
    ("fd00::5", None),
    ("192.168.2.1", "client_out_of_scope"),
    ("8.8.8.8", "client_out_of_scope"),
    ("2001:db8::1", "client_out_of_scope"),
    ("not-an-ip", "client_out_of_scope"),
    ("", "client_out_of_scope"),
])
def test_client_subnets(client, expected):
    r = rules(client_subnets=["10.0.0.0/8", ipaddress.ip_network("192.168.1.0/24"), "fd00::/8"])
    assert reason(r.consider(GET, client, "http://h/f.iso")) == expected
    assert reason(r.consider(GET, client, "http://h/f.iso")) == expected  # the cached answer agrees


def test_no_client_subnets_means_every_client():
    assert rules().consider(GET, "not-even-an-ip", "http://h/f.iso") is None


def test_authorization_is_never_cached():
    head = RequestHead(method="GET", target="/f.iso", version="HTTP/1.1", host="h", authorization=True)
    assert reason(rules().consider(head, "10.0.0.1", "http://h/f.iso")) == "authorization"


def test_consider_on_parsed_wire_request():
    buf = b"GET /dl/../Files/%66.ISO HTTP/1.1\r\nHost: CDN.Example.com\r\nCookie: a=b\r\n\r\n"
    (head,) = parse_heads(buf).requests
    url = canonical_url(head.target, head.host, 80)
    assert url == "http://cdn.example.com/Files/f.ISO"
    assert rules(host_allow=["cdn.example.com"]).consider(head, "10.0.0.1", url) is None


def test_bad_rule_values_are_refused():
    with pytest.raises(ValueError):
        rules(client_subnets=["10.0.0.300/8"])
    with pytest.raises(ValueError):
        rules(min_size=10, max_size=5)
    with pytest.raises(ValueError):
        rules(min_size=-1)


def test_from_settings_uses_every_field():
    settings = Settings(extensions=["mkv"], content_types=["video/"], host_allow=["*.tv"], host_deny=["ads.tv"],
                        client_subnets=["10.0.0.0/8"], min_size=5, max_size=50)
    r = Rules.from_settings(settings)
    assert r.consider(GET, "10.0.0.1", "http://a.tv/x.mkv") is None
    assert reason(r.consider(GET, "10.0.0.1", "http://a.tv/x.iso")) == "extension"
    assert reason(r.consider(GET, "10.0.0.1", "http://ads.tv/x.mkv")) == "host_denied"
    assert reason(r.consider(GET, "10.0.0.1", "http://a.com/x.mkv")) == "host_not_allowed"
    assert reason(r.consider(GET, "11.0.0.1", "http://a.tv/x.mkv")) == "client_out_of_scope"
    assert reason(r.accept_probe(ProbeResult(200, 4, "video/mp4"))) == "too_small"
    assert reason(r.accept_probe(ProbeResult(200, 51, "video/mp4"))) == "too_large"
    assert reason(r.accept_probe(ProbeResult(200, 50, "text/html"))) == "content_type"
    assert r.accept_probe(ProbeResult(200, 50, "video/mp4")) is None


def test_default_settings_consider_an_iso_download():
    r = Rules.from_settings(Settings())
    assert r.consider(GET, "10.0.0.1", "http://h/debian.iso") is None
    assert r.accept_probe(ProbeResult(200, 700 << 20, "application/x-iso9660-image")) is None


# ---- accept_probe -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("probe, expected", [
    (ProbeResult(200, 5000, "video/mp4"), None),
    (ProbeResult(200, 1000, "application/octet-stream"), None),          # bounds are inclusive
    (ProbeResult(200, 10_000, "Video/MP4; codecs=avc1"), None),
    (ProbeResult(200, 5000, None), None),                                  # no type: size decides
    (ProbeResult(404, 5000, "video/mp4"), "probe_status_404"),
    (ProbeResult(206, 5000, "video/mp4"), "probe_status_206"),
    (ProbeResult(302, None, None), "probe_status_302"),
    (ProbeResult(200, None, "video/mp4"), "size_unknown"),
    (ProbeResult(200, 999, "video/mp4"), "too_small"),
    (ProbeResult(200, 10_001, "video/mp4"), "too_large"),
    (ProbeResult(200, 5000, "text/html"), "content_type"),
    (ProbeResult(200, 5000, "application/octet-streamx"), None),          # a prefix match, as configured
    (ProbeResult(200, 5000, "video/mp4", cache_control="no-store"), "no_store"),
    (ProbeResult(200, 5000, "video/mp4", cache_control="max-age=0, No-Store"), "no_store"),
    (ProbeResult(200, 5000, "video/mp4", cache_control="private=\"Set-Cookie\""), "private"),
    (ProbeResult(200, 5000, "video/mp4", cache_control="public, max-age=3600"), None),
    (ProbeResult(200, 5000, "video/mp4", cache_control="no-cache"), None),  # revalidate, still storable
])
def test_accept_probe(probe, expected):
    assert reason(rules().accept_probe(probe)) == expected


def test_empty_content_type_list_accepts_any_type():
    assert rules(content_types=[]).accept_probe(ProbeResult(200, 5000, "text/html")) is None


def test_probe_from_real_headers():
    probe = ProbeResult.from_headers(200, {"content-length": "5000", "CONTENT-TYPE": "video/mp4",
                                           "Cache-Control": "private, max-age=60"})
    assert reason(rules().accept_probe(probe)) == "private"
