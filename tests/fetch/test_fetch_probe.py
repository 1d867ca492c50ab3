"""HEAD probe and resolver against real HTTP servers on 127.0.0.1 (no DNS leaves the machine)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cachetap.fetch.probe import ProbeError, probe
from cachetap.fetch.resolver import Resolver
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.origin import Origin, Resource

MiB = 1 << 20


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


def test_head_reports_size_type_validators_and_sends_the_original_host(origin):
    origin.add("/big.iso", Resource(size=3 * MiB, content_type="application/x-iso9660-image"))
    resolver = Resolver({"files.test": ["127.0.0.1"]}, allow_networks=LOOPBACK_NETWORKS)
    result = probe(f"http://files.test:{origin.port}/big.iso", resolver, timeout=30)
    assert (result.status, result.size, result.content_type) == (200, 3 * MiB, "application/x-iso9660-image")
    assert result.etag and result.last_modified and result.accept_ranges
    stats = origin.stats("/big.iso")
    assert stats.methods == {"HEAD": 1}
    assert stats.hosts == [f"files.test:{origin.port}"]


@pytest.mark.parametrize("directive", ["no-store", "private, max-age=60"])
def test_cache_control_is_reported(origin, directive):
    origin.add("/x.bin", Resource(size=MiB, cache_control=directive))
    result = probe(f"http://files.test:{origin.port}/x.bin", Resolver({"files.test": ["127.0.0.1"]}, allow_networks=LOOPBACK_NETWORKS), 30)
    assert result.cache_control == directive


def test_missing_object_is_a_404_result_not_an_error(origin):
    result = probe(f"http://files.test:{origin.port}/nope.iso", Resolver({"files.test": ["127.0.0.1"]}, allow_networks=LOOPBACK_NETWORKS), 30)
    assert result.status == 404


def test_slow_origin_times_out(origin):
    origin.add("/slow.iso", Resource(size=MiB, delay=3.0))
    with pytest.raises(ProbeError) as err:
        probe(f"http://files.test:{origin.port}/slow.iso", Resolver({"files.test": ["127.0.0.1"]}, allow_networks=LOOPBACK_NETWORKS), timeout=0.3)
    assert err.value.reason == "timeout"


def test_connects_to_the_caches_resolution_and_tries_each_address(origin):
    origin.add("/a.zip", Resource(size=MiB))
    # 127.0.0.0 sorts first and refuses; the probe moves on to the address that answers
    result = probe(f"http://files.test:{origin.port}/a.zip", Resolver({"files.test": ["127.0.0.1", "127.0.0.0"]}, allow_networks=LOOPBACK_NETWORKS), 30)
    assert result.status == 200
    with pytest.raises(ProbeError) as err:  # the host resolves only to a dead address: no fallback to anything else
        probe(f"http://files.test:{origin.port}/a.zip", Resolver({"files.test": ["127.0.0.2"]}, allow_networks=LOOPBACK_NETWORKS), 30)
    assert err.value.reason == "connect"
    assert origin.stats("/a.zip").requests == 1


class Redirecting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the connection closes after each answer: no length needed
    hosts: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        port = self.server.server_address[1]
        Redirecting.hosts.append(f"{self.path} {self.headers.get('Host')}")
        routes = {
            "/hop": f"http://other.test:{port}/final.iso",
            "/relative": "/final.iso",
            "/loop": "/loop",
            "/secure": f"https://other.test:{port}/final.iso",
        }
        if self.path in routes:
            self.send_response(302)
            self.send_header("Location", routes[self.path])
        elif self.path == "/final.iso":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(5 * MiB))
        elif self.path == "/nolength.iso":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
        else:
            self.send_response(404)
        self.end_headers()


@pytest.fixture
def redirecting() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    Redirecting.hosts = []
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


RESOLVE = {"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}


def test_redirects_are_followed_and_each_host_resolved_again(redirecting):
    result = probe(f"http://files.test:{redirecting}/hop", Resolver(RESOLVE, allow_networks=LOOPBACK_NETWORKS), 30)
    assert (result.status, result.size) == (200, 5 * MiB)
    assert Redirecting.hosts == [f"/hop files.test:{redirecting}", f"/final.iso other.test:{redirecting}"]
    assert probe(f"http://files.test:{redirecting}/relative", Resolver(RESOLVE, allow_networks=LOOPBACK_NETWORKS), 30).size == 5 * MiB


def test_redirect_to_an_unresolvable_host_fails(redirecting):
    with pytest.raises(ProbeError) as err:
        probe(f"http://files.test:{redirecting}/hop", Resolver({"files.test": ["127.0.0.1"], "other.test": []}, allow_networks=LOOPBACK_NETWORKS), 30)
    assert err.value.reason == "unresolved"


@pytest.mark.parametrize("path, reason", [("/loop", "too_many_redirects"), ("/secure", "redirect_scheme")])
def test_bad_redirects_raise(redirecting, path, reason):
    with pytest.raises(ProbeError) as err:
        probe(f"http://files.test:{redirecting}{path}", Resolver(RESOLVE, allow_networks=LOOPBACK_NETWORKS), 30)
    assert err.value.reason == reason


def test_missing_length_gives_no_size(redirecting):
    result = probe(f"http://files.test:{redirecting}/nolength.iso", Resolver(RESOLVE, allow_networks=LOOPBACK_NETWORKS), 30)
    assert (result.status, result.size) == (200, None)


def test_garbage_answer_is_a_protocol_error():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"this is not HTTP at all\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(ProbeError) as err:
            probe(f"http://files.test:{listener.getsockname()[1]}/x.iso", Resolver(RESOLVE, allow_networks=LOOPBACK_NETWORKS), 30)
    assert err.value.reason == "protocol"


@pytest.mark.parametrize("url, reason", [
    ("https://files.test/x.iso", "scheme"),
    ("ftp://files.test/x.iso", "scheme"),
    ("http:///x.iso", "bad_url"),
    ("http://files.test:99999/x.iso", "bad_url"),
    ("http://files.test:port/x.iso", "bad_url"),
    ("http://" + "a" * 70 + ".test/x.iso", "unresolved"),  # a label over 63 characters never reaches DNS
])
def test_bad_urls_raise_with_a_reason(url, reason):
    with pytest.raises(ProbeError) as err:
        probe(url, Resolver(RESOLVE, allow_networks=LOOPBACK_NETWORKS), 5)
    assert err.value.reason == reason


# ---- resolver ------------------------------------------------------------------------------------

def test_resolver_overrides_literals_and_hosts_file():
    resolver = Resolver({"Files.Test.": ["127.0.0.1", "::1"]})
    assert resolver.addresses("files.test") == {"127.0.0.1", "::1"}
    assert resolver.addresses("FILES.TEST.") == {"127.0.0.1", "::1"}
    assert resolver.addresses("10.1.2.3") == {"10.1.2.3"}
    assert resolver.addresses("[::1]") == {"::1"}
    assert resolver.addresses("localhost") >= {"127.0.0.1"}  # /etc/hosts, no DNS query


@pytest.mark.parametrize("host", ["", "   ", "a" * 70 + ".test", "bad\x00host"])
def test_resolver_failures_are_empty(host):
    assert Resolver({}).addresses(host) == set()


def test_resolver_caches_answers_and_failures_for_their_ttl(monkeypatch):
    calls: list[str] = []
    real = socket.getaddrinfo

    def counting(host, *args, **kwargs):
        calls.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    now = [1000.0]
    resolver = Resolver({}, ttl=60, negative_ttl=5, clock=lambda: now[0])
    bad = "b" * 70 + ".test"
    for _ in range(3):
        assert "127.0.0.1" in resolver.addresses("localhost")
        assert resolver.addresses(bad) == set()
    assert calls == ["localhost", bad]
    now[0] += 10  # the failure expired, the answer did not
    resolver.addresses("localhost"), resolver.addresses(bad)
    assert calls == ["localhost", bad, bad]
    now[0] += 60
    resolver.addresses("localhost")
    assert calls == ["localhost", bad, bad, "localhost"]


def test_bad_override_addresses_are_refused():
    with pytest.raises(ValueError):
        Resolver({"files.test": ["not-an-address"]}, allow_networks=LOOPBACK_NETWORKS)
