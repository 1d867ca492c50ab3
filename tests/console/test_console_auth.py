"""The console's access rules as values: loopback, Host names, same origin, tokens (no server)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from cachetap.console.auth import Guard, host_name, is_loopback, same_origin

TOKEN = "a-token-of-thirty-two-characters"


def request(method: str = "GET", client: str = "127.0.0.1", **headers: str) -> Request:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": method, "path": "/api/overview", "headers": raw,
                    "client": (client, 50000), "query_string": b""})


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("evil.example", False), ("", False), (None, False),
])
def test_is_loopback(address, expected):
    assert is_loopback(address) is expected


def test_host_name_drops_the_port():
    assert [host_name(h) for h in ("127.0.0.1:8643", "[::1]:8643", "localhost", "")] == ["127.0.0.1", "::1",
                                                                                         "localhost", ""]


def test_same_origin_needs_scheme_host_and_port_to_match():
    assert same_origin(request(host="127.0.0.1:8643"))  # no Origin: curl, the CLI
    assert same_origin(request(host="127.0.0.1:8643", origin="http://127.0.0.1:8643"))
    assert not same_origin(request(host="127.0.0.1:8643", origin="http://127.0.0.1:9000"))
    assert not same_origin(request(host="127.0.0.1:8643", origin="null"))
    assert not same_origin(request(host="127.0.0.1:8643", origin="file://127.0.0.1:8643"))


def test_reads_from_loopback_are_free_unless_the_host_is_foreign():
    guard = Guard(lambda: TOKEN)
    assert guard.refusal(request(host="127.0.0.1:8643")) is None
    assert guard.refusal(request(host="localhost:8643")) is None
    assert guard.refusal(request(host="rebound.example:8643"))[0] == 401
    assert guard.refusal(request(client="10.0.0.9", host="10.0.0.5:8643"))[0] == 401
    assert guard.refusal(request(client="10.0.0.9", host="10.0.0.5:8643", authorization=f"Bearer {TOKEN}")) is None
    assert guard.refusal(request(client="10.0.0.9", host="10.0.0.5:8643", authorization=f"Basic {TOKEN}"))[0] == 401


def test_writes_need_the_token_and_the_same_origin_everywhere():
    guard = Guard(lambda: TOKEN)
    post = lambda **h: guard.refusal(request("POST", host="127.0.0.1:8643", **h))  # noqa: E731
    assert post()[0] == 401
    assert post(authorization="Bearer wrong")[0] == 401
    assert post(authorization=f"Bearer {TOKEN}") is None
    assert post(authorization=f"bearer {TOKEN}", origin="http://127.0.0.1:8643") is None
    assert post(authorization=f"Bearer {TOKEN}", origin="http://evil.example") == (403, "cross-origin request refused")
    assert Guard(lambda: "").refusal(request("POST", host="127.0.0.1:8643", authorization="Bearer "))[0] == 401
