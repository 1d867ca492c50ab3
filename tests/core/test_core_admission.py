"""Admission threshold, the destination (poisoning) guard and ProbeResult."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cachetap.core.admission import ProbeResult, admit, destination_trusted


@pytest.mark.parametrize("hits, threshold, expected", [
    (0, 0, False), (1, 0, True), (1, 1, False), (2, 1, True), (5, 5, False), (6, 5, True),
])
def test_admit_needs_more_hits_than_threshold(hits, threshold, expected):
    assert admit(hits, threshold) is expected


# ---- destination_trusted --------------------------------------------------------------------------------------

ADDRS = {"93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"}


@pytest.mark.parametrize("server, expected", [
    ("93.184.216.34", True),
    ("::ffff:93.184.216.34", True),                       # IPv4-mapped IPv6 of a resolved address
    ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("2606:2800:0220:0001:0248:1893:25C8:1946", True),    # another spelling of the same address
    ("93.184.216.35", False),
    ("10.0.0.1", False),
    ("", False),
    ("not-an-ip", False),
    ("93.184.216.34\x00", False),
])
def test_server_must_be_among_the_host_addresses(server, expected):
    assert destination_trusted(server, ADDRS, []) is expected


def test_mapped_addresses_in_the_resolved_set_match_plain_ipv4():
    assert destination_trusted("93.184.216.34", {"::ffff:93.184.216.34"}, [])


def test_trusted_networks_admit_any_host():
    nets = [ipaddress.ip_network("10.20.0.0/16"), "fd00:cd::/32"]
    assert destination_trusted("10.20.3.4", set(), nets)
    assert destination_trusted("::ffff:10.20.3.4", set(), nets)
    assert destination_trusted("fd00:cd::77", set(), nets)
    assert not destination_trusted("10.21.0.1", set(), nets)
    assert not destination_trusted("2001:db8::1", set(), nets)


def test_bad_entries_trust_nothing():
    assert not destination_trusted("10.0.0.1", {"garbage", ""}, ["not-a-network", "10.0.0.0/99"])
    assert destination_trusted("10.0.0.1", {"garbage", "10.0.0.1"}, ["not-a-network"])


def test_empty_addresses_and_networks_trust_nothing():
    assert not destination_trusted("93.184.216.34", set(), [])


# ---- ProbeResult --------------------------------------------------------------------------------------------------

def test_from_headers_reads_every_field_case_insensitively():
    probe = ProbeResult.from_headers(200, {
        "Content-Length": " 734003200 ", "content-type": "application/x-iso9660-image",
        "ETAG": '"abc-123"', "Last-Modified": "Sat, 10 Feb 2024 10:00:00 GMT",
        "cache-control": "public, max-age=86400", "Accept-Ranges": "bytes"})
    assert probe == ProbeResult(status=200, size=734003200, content_type="application/x-iso9660-image",
                                etag='"abc-123"', last_modified="Sat, 10 Feb 2024 10:00:00 GMT",
                                cache_control="public, max-age=86400", accept_ranges=True)


def test_from_headers_with_nothing():
    assert ProbeResult.from_headers(404, {}) == ProbeResult(status=404)


@pytest.mark.parametrize("value, size", [
    ("0", 0), ("42", 42), ("42, 42", 42),
    ("-1", None), ("abc", None), ("1.5", None), ("", None), ("4 2", None), ("1, 2", None),
    ("٣", None), ("99999999999999999999", None), ("0x10", None),
])
def test_content_length_parsing(value, size):
    assert ProbeResult.from_headers(200, {"Content-Length": value}).size == size


@pytest.mark.parametrize("value, expected", [("bytes", True), ("none", False), ("Bytes", True), ("", False),
                                             ("none, bytes", True)])
def test_accept_ranges(value, expected):
    assert ProbeResult.from_headers(200, {"accept-ranges": value}).accept_ranges is expected


def test_from_headers_accepts_httpx_headers():
    import httpx
    headers = httpx.Headers([("Content-Length", "10"), ("content-length", "10"), ("ETag", "W/\"x\"")])
    probe = ProbeResult.from_headers(200, headers)
    assert probe.size == 10 and probe.etag == 'W/"x"'


def test_to_dict_from_dict_round_trip_through_json():
    probe = ProbeResult(200, 5, "video/mp4", '"e"', "yesterday", "public", True)
    assert ProbeResult.from_dict(json.loads(json.dumps(probe.to_dict()))) == probe
    assert ProbeResult.from_dict({"status": 404}) == ProbeResult(404)


@pytest.mark.parametrize("data", [
    {}, {"status": "200"}, {"status": None}, {"status": True}, {"status": 200, "size": "5"},
    {"status": 200, "size": -1}, {"status": 200, "etag": 5}, {"status": 200, "content_type": ["a"]},
])
def test_from_dict_rejects_bad_values(data):
    with pytest.raises(ValueError):
        ProbeResult.from_dict(data)


def test_from_dict_ignores_unknown_keys():
    assert ProbeResult.from_dict({"status": 200, "size": 3, "extra": 1}) == ProbeResult(200, 3)
