"""The cache server against real clients (curl, wget) on 127.0.0.1."""

from __future__ import annotations

import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from conftest import UTF8_NAME, Served, sha256


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True, check=True)


def head_of(*args: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one curl request."""
    done = curl(*args) if "-I" in args else curl("-D", "-", *args)  # -I prints the head itself
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def test_full_download_is_identical_with_all_headers(served: Served, tmp_path: Path):
    out = tmp_path / "out"
    status, headers, _ = head_of("-o", str(out), served.url())
    assert status == 200
    assert sha256(out.read_bytes()) == sha256(served.data)
    assert headers["content-length"] == str(len(served.data))
    assert headers["content-type"] == "application/x-iso9660-image"
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"') and headers["last-modified"].endswith("GMT")
    assert headers["content-disposition"] == 'inline; filename="big.iso"'
    assert headers["server"].startswith("cachetap/") and headers["date"].endswith("GMT")
    assert served.lookup.hits[served.key()] == 1


def test_ranges(served: Served):
    data = served.data
    status, headers, body = head_of("-r", "100-199", served.url())
    assert (status, body) == (206, data[100:200])
    assert headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert headers["content-length"] == "100"
    assert head_of("-r", "-1000", served.url())[2] == data[-1000:]
    assert head_of("-r", f"{len(data) - 5}-", served.url())[2] == data[-5:]
    # Several ranges: the whole object with 200 (documented choice).
    status, _, body = head_of("-r", "0-1,5-6", served.url())
    assert status == 200 and body == data


def test_unsatisfiable_range_is_416(served: Served):
    status, headers, body = head_of("-r", f"{len(served.data)}-", served.url())
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(served.data)}"
    assert body == b""
    status, headers, _ = head_of("-r", "0-", served.server.base_url + served.path("sub/empty.bin"))
    assert status == 416 and headers["content-range"] == "bytes */0"


def test_empty_file(served: Served):
    status, headers, body = head_of(served.server.base_url + served.path("sub/empty.bin"))
    assert (status, headers["content-length"], body) == (200, "0", b"")


def test_wget_resumes_a_partial_file(served: Served, tmp_path: Path):
    target = tmp_path / "big.iso"
    target.write_bytes(served.data[:1_234_567])
    subprocess.run(["wget", "-q", "-c", "-O", str(target), served.url()], check=True, timeout=60)
    assert sha256(target.read_bytes()) == sha256(served.data)


def test_head_has_headers_and_no_body(served: Served):
    status, headers, body = head_of("-I", served.url())
    assert status == 200 and body == b""
    assert headers["content-length"] == str(len(served.data))
    # Range is defined for GET only: HEAD with Range still describes the whole object.
    status, headers, _ = head_of("-I", "-r", "0-9", served.url())
    assert status == 200 and headers["content-length"] == str(len(served.data))
    assert served.lookup.hits[served.key()] == 0


def test_conditional_requests(served: Served):
    _, headers, _ = head_of("-I", served.url())
    etag, modified = headers["etag"], headers["last-modified"]
    for condition in [f"If-None-Match: {etag}", f"If-None-Match: W/{etag}", f'If-None-Match: "x", {etag}',
                      "If-None-Match: *", f"If-Modified-Since: {modified}"]:
        status, headers304, body = head_of("-H", condition, served.url())
        assert (status, body) == (304, b""), condition
        assert headers304["etag"] == etag
    for condition in ['If-None-Match: "other"', "If-Modified-Since: Thu, 01 Jan 1970 00:00:01 GMT",
                      "If-Modified-Since: garbage"]:
        status, _, body = head_of("-H", condition, served.url())
        assert status == 200 and body == served.data, condition
    # If-None-Match wins over a matching If-Modified-Since.
    status, _, _ = head_of("-H", 'If-None-Match: "other"', "-H", f"If-Modified-Since: {modified}", served.url())
    assert status == 200


def test_if_range(served: Served):
    _, headers, _ = head_of("-I", served.url())
    etag, modified = headers["etag"], headers["last-modified"]
    status, _, body = head_of("-r", "10-19", "-H", f"If-Range: {etag}", served.url())
    assert (status, body) == (206, served.data[10:20])
    status, _, body = head_of("-r", "10-19", "-H", f"If-Range: {modified}", served.url())
    assert (status, body) == (206, served.data[10:20])
    for stale in ['"changed"', f"W/{etag}", "Thu, 01 Jan 1970 00:00:01 GMT"]:
        status, _, body = head_of("-r", "10-19", "-H", f"If-Range: {stale}", served.url())
        assert (status, body) == (200, served.data), stale


def test_utf8_file_name(served: Served, tmp_path: Path):
    status, headers, body = head_of(served.url(UTF8_NAME))
    assert status == 200 and body == served.data[:1000]
    assert headers["content-disposition"] == \
        """inline; filename="cafe u.bin"; filename*=UTF-8''caf%C3%A9%20%C3%BC.bin"""
    subprocess.run(["curl", "-sS", "-O", "-J", served.url(UTF8_NAME)], cwd=tmp_path, check=True, timeout=60)
    assert (tmp_path / "cafe u.bin").read_bytes() == served.data[:1000]


def test_unknown_key_is_404(served: Served):
    status, headers, _ = head_of(served.server.base_url + "/c/" + "0" * 32 + "/x.iso")
    assert status == 404
    assert head_of(served.server.base_url + "/nothing")[0] == 404


def test_deleted_file_redirects_to_the_origin(served: Served, tmp_path: Path):
    url = served.url()
    (served.root / "big.iso").unlink()
    status, headers, body = head_of(url)
    assert status == 302 and body == b""
    assert headers["location"] == "http://origin.invalid/mirror/big.iso"
    assert headers["cache-control"] == "no-store"


def test_redirect_is_followed_to_a_real_origin(tmp_path: Path, payload: bytes):
    from cachetap.web.lookup import DirectoryLookup
    from cachetap.web.server import CacheServer

    origin_dir, cache_dir = tmp_path / "origin", tmp_path / "cache"
    origin_dir.mkdir(), cache_dir.mkdir()
    (origin_dir / "a.iso").write_bytes(payload)
    (cache_dir / "a.iso").write_bytes(payload)
    handler = partial(SimpleHTTPRequestHandler, directory=str(origin_dir))
    origin = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    lookup = DirectoryLookup(cache_dir, origin_base=f"http://127.0.0.1:{origin.server_port}")
    try:
        with CacheServer(lookup) as server:
            url = server.base_url + lookup.url_path("a.iso")
            (cache_dir / "a.iso").unlink()
            out = tmp_path / "out"
            subprocess.run(["curl", "-sS", "-L", "-o", str(out), url], check=True, timeout=60)
            assert sha256(out.read_bytes()) == sha256(payload)
    finally:
        origin.shutdown()
        origin.server_close()


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_healthz_and_metrics(served: Served):
    assert curl(served.server.base_url + "/healthz").stdout == b"ok"
    curl("-o", "/dev/null", served.url())
    curl("-o", "/dev/null", served.server.base_url + "/c/" + "f" * 32 + "/x")
    text = curl(served.server.base_url + "/metrics").stdout.decode()
    assert 'cachetap_serve_requests_total{status="200"} 2.0' in text
    assert 'cachetap_serve_requests_total{status="404"} 1.0' in text
    assert metric(text, "cachetap_serve_body_bytes_total") == len(served.data)
    assert 'cachetap_serve_fallbacks_total{reason="not_servable"} 1.0' in text


def test_many_urls_over_one_keep_alive_connection(served: Served, tmp_path: Path):
    outputs = []
    args = []
    for i in range(20):
        out = tmp_path / f"o{i}"
        outputs.append(out)
        args += ["-o", str(out), served.url()]
    done = curl("-w", "%{num_connects}\n", *args)
    assert done.stdout.decode().split() == ["1"] + ["0"] * 19  # one connection reused
    assert all(out.read_bytes() == served.data for out in outputs)


def test_a_file_rewritten_with_another_size_is_served_as_it_is_now(served: Served):
    """The lookup keeps what it found for a second; the server notices the file changed and asks again."""
    first = httpx.get(served.url())
    assert first.status_code == 200 and first.content == served.data
    (served.root / "big.iso").write_bytes(b"new content")
    second = httpx.get(served.url())
    assert second.status_code == 200 and second.content == b"new content"
    assert second.headers["etag"] != first.headers["etag"]
