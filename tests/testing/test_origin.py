import base64
import hashlib
import socket

import blake3
import httpx
import pytest

from cachetap.testing.origin import Origin, Resource, generated_digest

SIZE = 3 * 1_000_003 // 2  # spans a pattern wrap


@pytest.fixture
def origin():
    with Origin() as o:
        yield o


def test_get_full_matches_expected_sha_and_counts(origin):
    origin.add("/a.iso", Resource(size=SIZE))
    r = httpx.get(origin.url("/a.iso"))
    assert r.status_code == 200 and len(r.content) == SIZE
    assert blake3.blake3(r.content).hexdigest() == origin.expected_digest("/a.iso")
    assert r.headers["accept-ranges"] == "bytes" and r.headers["etag"].startswith('"')
    st = origin.stats("/a.iso")
    assert st.methods["GET"] == 1 and st.body_bytes == SIZE and st.ranges == [None]


def test_content_differs_per_path(origin):
    assert generated_digest("/a", 1000) != generated_digest("/b", 1000)


@pytest.mark.parametrize("header,start,end", [
    ("bytes=0-99", 0, 100), ("bytes=1000000-1000010", 1_000_000, 1_000_011),
    ("bytes=-10", SIZE - 10, SIZE), ("bytes=1499990-", 1_499_990, SIZE), ("bytes=5-999999999", 5, SIZE)])
def test_single_range(origin, header, start, end):
    origin.add("/r.bin", Resource(size=SIZE))
    full = httpx.get(origin.url("/r.bin")).content
    r = httpx.get(origin.url("/r.bin"), headers={"Range": header})
    assert r.status_code == 206 and r.content == full[start:end]
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"


@pytest.mark.parametrize("header,status", [("bytes=9999999-", 416), ("bytes=0-1,5-6", 200),
                                           ("items=0-5", 200), ("bytes=abc", 200), ("bytes=9-3", 200)])
def test_bad_or_multi_ranges(origin, header, status):
    origin.add("/r.bin", Resource(size=1000))
    r = httpx.get(origin.url("/r.bin"), headers={"Range": header})
    assert r.status_code == status
    if status == 416:
        assert r.headers["content-range"] == "bytes */1000"


def test_head_conditional_and_headers(origin):
    origin.add("/h.zip", Resource(size=500, cache_control="no-store", content_md5=True, content_type="application/zip"))
    h = httpx.head(origin.url("/h.zip"))
    assert h.status_code == 200 and h.headers["content-length"] == "500" and h.content == b""
    assert h.headers["cache-control"] == "no-store" and h.headers["content-type"] == "application/zip"
    body = httpx.get(origin.url("/h.zip")).content
    assert h.headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
    assert httpx.head(origin.url("/h.zip"), headers={"If-None-Match": h.headers["etag"]}).status_code == 304
    assert httpx.head(origin.url("/h.zip"), headers={"If-None-Match": '"other"'}).status_code == 200
    assert httpx.head(origin.url("/h.zip"),
                      headers={"If-Modified-Since": h.headers["last-modified"]}).status_code == 304


def test_change_after_first_request_changes_content_and_etag(origin):
    origin.add("/c.bin", Resource(size=4000, change_after=1))
    before = origin.expected_digest("/c.bin")
    h = httpx.head(origin.url("/c.bin"))
    g = httpx.get(origin.url("/c.bin"))
    assert g.headers["etag"] != h.headers["etag"]
    assert blake3.blake3(g.content).hexdigest() == origin.expected_digest("/c.bin") != before
    origin.change("/c.bin")
    assert httpx.head(origin.url("/c.bin")).headers["etag"] not in (h.headers["etag"], g.headers["etag"])


@pytest.mark.parametrize("status", [404, 500])
def test_error_status(origin, status):
    origin.add("/e.bin", Resource(size=10, status=status))
    assert httpx.get(origin.url("/e.bin")).status_code == status
    assert httpx.get(origin.url("/missing.bin")).status_code == 404


def _raw_get(origin, path, extra=""):
    """Read everything the origin sends until it closes; returns (head, body)."""
    with socket.create_connection(("127.0.0.1", origin.port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


def test_drop_after_closes_mid_body(origin):
    origin.add("/d.bin", Resource(size=100_000, drop_after=30_000))
    head, body = _raw_get(origin, "/d.bin")
    assert "Content-Length: 100000" in head and len(body) == 30_000
    head, body = _raw_get(origin, "/d.bin", "Range: bytes=20000-\r\n")
    assert len(body) == 10_000
    with pytest.raises(httpx.HTTPError):
        httpx.get(origin.url("/d.bin"))


def test_lying_content_length(origin):
    origin.add("/l.bin", Resource(size=50_000, extra_length=1000))
    head, body = _raw_get(origin, "/l.bin")
    assert "Content-Length: 51000" in head and len(body) == 50_000
    assert httpx.head(origin.url("/l.bin")).headers["content-length"] == "51000"


def test_rate_and_delay_still_deliver_everything(origin):
    origin.add("/s.bin", Resource(size=200_000, rate=2_000_000, delay=0.05))
    r = httpx.get(origin.url("/s.bin"))
    assert blake3.blake3(r.content).hexdigest() == origin.expected_digest("/s.bin")


def test_directory_serving_refuses_traversal(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.deb").write_bytes(b"hello" * 1000)
    (tmp_path / "secret").write_bytes(b"no")
    with Origin(directory=root) as o:
        r = httpx.get(o.url("/f.deb"), headers={"Range": "bytes=5-9"})
        assert r.status_code == 206 and r.content == b"hello"
        head, _ = _raw_get(o, "/../secret")
        assert head.startswith("HTTP/1.1 404")
        assert httpx.get(o.url("/%2e%2e/secret")).status_code == 404


def test_bad_resource_definitions(origin):
    with pytest.raises(ValueError):
        origin.add("/x", Resource())
    with pytest.raises(ValueError):
        origin.add("x", Resource(size=1))


def test_a_paced_file_is_sent_whole_and_limited_from_the_first_byte(tmp_path):
    """Kernel pacing (SO_MAX_PACING_RATE) limits a file's range from its first byte: a limit kept
    only in user space lets the socket buffer take the first MiBs at loopback speed."""
    import time

    data = bytes(range(256)) * 4096 * 2  # 2 MiB
    (tmp_path / "f.bin").write_bytes(data)
    with Origin(directory=tmp_path, rate=2_000_000) as o:
        began = time.monotonic()
        r = httpx.get(o.url("/f.bin"), headers={"Range": "bytes=0-1999999"}, timeout=30)
        took = time.monotonic() - began
        assert r.status_code == 206 and r.content == data[:2_000_000]
        # 2 MB at 2 MB/s takes about a second; unpaced, loopback sends it in a few ms. The bound
        # leaves room for the initial burst TCP allows before pacing starts.
        assert took > 0.5
        assert o.stats("/f.bin").body_bytes == 2_000_000
        assert httpx.get(o.url("/f.bin"), timeout=30).content == data
