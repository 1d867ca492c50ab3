"""The fetch guard's address rules, including wrapped IPv4 addresses."""

from __future__ import annotations

import ipaddress

import pytest

from cachetap.core.egress import allowed, port_matches, refusal

OWN = {ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("2001:db8::2")}
LAN = [ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::", "loopback"),
    ("169.254.169.254", "link_local"), ("fe80::1", "link_local"), ("::ffff:169.254.169.254", "link_local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("::ffff:0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("64:ff9b::a01:203", "private"), ("::ffff:192.168.0.1", "private"),
    ("100.64.0.1", "shared"), ("100.127.255.254", "shared"),
    ("192.0.2.2", "own_address"), ("2001:db8::2", "own_address"),
    ("not-an-ip", "not_an_address"), ("", "not_an_address"), ("1.2.3.4%eth0", "not_an_address"),
])
def test_refused_by_default(address, reason):
    assert refusal(address, [], OWN) == reason


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946",
                                     "::ffff:93.184.216.34", "64:ff9b::5db8:d822"])
def test_public_unicast_is_allowed(address):
    assert refusal(address, [], OWN) is None


def test_listed_networks_are_allowed_but_never_unspecified_or_multicast():
    assert refusal("10.1.2.3", LAN, OWN) is None
    assert refusal("::ffff:10.1.2.3", LAN, OWN) is None  # the carried address is what is listed
    assert refusal("127.0.0.1", [ipaddress.ip_network("127.0.0.0/8")], OWN) is None
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    assert refusal("0.0.0.0", everything, OWN) == "unspecified"
    assert refusal("224.0.0.1", everything, OWN) == "multicast"
    assert refusal("172.16.0.1", LAN, OWN) == "private"


def test_allowed_splits_and_keeps_order():
    assert allowed(["93.184.216.34", "127.0.0.1", "10.0.0.1"], LAN, OWN) == (
        ["93.184.216.34", "10.0.0.1"], {"127.0.0.1": "loopback"})


@pytest.mark.parametrize("url, port, ok", [
    ("http://example.org/a.iso", 80, True), ("http://example.org:80/a.iso", 80, True),
    ("http://example.org:8080/a.iso", 8080, True), ("http://example.org:6379/a.iso", 80, False),
    ("http://example.org/a.iso", 8080, False), ("http://[::1]:99999/a", 80, False), ("ftp://x/a", 21, False),
])
def test_port_must_match_destination(url, port, ok):
    assert port_matches(url, port) is ok
