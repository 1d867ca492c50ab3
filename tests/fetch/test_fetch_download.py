"""download() against a real aria2c and the real test origin on loopback."""

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import hashlib

import httpx
import pytest

from cachetap.fetch.aria2 import Aria2Daemon, Aria2Options
from cachetap.fetch.download import DownloadError, _complete_prefix, download
from cachetap.store.blobs import BlobStore, file_digest
from cachetap.testing.origin import Origin, Resource

MIB = 1 << 20
OPTIONS = Aria2Options(split=4, max_connection_per_server=4, max_tries=2, retry_wait=0, timeout=10)


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        yield o


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with Aria2Daemon(tmp_path_factory.mktemp("aria2"), OPTIONS) as d:
        yield d


@pytest.fixture
def blobs(tmp_path):
    return BlobStore(tmp_path / "cache")


def _job(origin, path, key, probe=True, **extra):
    """A job as the analyze stage builds it, with size/ETag from a real HEAD probe."""
    job = {"key": key, "url": origin.url(path), "size": None, "etag": None, "last_modified": None,
           "content_type": None, "claim": "t"}
    if probe:
        h = httpx.head(origin.url(path))
        job.update(size=int(h.headers["content-length"]), etag=h.headers.get("etag"),
                   last_modified=h.headers.get("last-modified"), content_type=h.headers.get("content-type"))
    job.update(extra)
    return job


def _nothing_left(blobs, daemon):
    assert list(blobs.iter_blobs()) == []
    assert list(blobs.iter_temp()) == []
    assert daemon.client.tell_stopped(0, 100, ["gid"]) == []
    assert daemon.client.tell_active(["gid"]) == []


def test_happy_path_multi_connection_byte_identical(origin, daemon, blobs):
    origin.add("/ok.iso", Resource(size=4 * MIB + 12345, rate=4_000_000, content_type="application/x-iso9660-image"))
    progress = []
    got = download(_job(origin, "/ok.iso", "1" * 32), daemon, blobs, OPTIONS,
                   on_progress=lambda done, total, speed: progress.append((done, total)))
    expected = origin.expected_digest("/ok.iso")
    assert got.digest == expected == file_digest(got.path)
    assert got.size == 4 * MIB + 12345 and got.path == blobs.path(expected)
    assert got.content_type == "application/x-iso9660-image" and got.etag.startswith('"')
    ranged = [r for r in origin.stats("/ok.iso").ranges if r and r.startswith("bytes=")]
    assert len(ranged) >= 2, origin.stats("/ok.iso").ranges
    assert progress and progress[-1] == (got.size, got.size)
    assert list(blobs.iter_temp()) == []
    assert daemon.client.tell_stopped(0, 100, ["gid"]) == []


def test_single_connection_rate_limited_origin(origin, daemon, blobs):
    origin.add("/slow.zip", Resource(size=MIB, rate=1_000_000, delay=0.1))
    one = Aria2Options(split=1, max_connection_per_server=1, max_tries=2, retry_wait=0)
    got = download(_job(origin, "/slow.zip", "2" * 32), daemon, blobs, one)
    assert got.digest == origin.expected_digest("/slow.zip")
    assert origin.stats("/slow.zip").methods["GET"] == 1


def test_origin_without_validators_and_job_without_size(origin, daemon, blobs):
    origin.add("/plain.bin", Resource(size=2 * MIB, etag=False, last_modified=False))
    got = download(_job(origin, "/plain.bin", "3" * 32, probe=False), daemon, blobs, OPTIONS)
    assert got.digest == origin.expected_digest("/plain.bin") and got.etag is None


def test_same_content_twice_is_one_blob(origin, daemon, blobs):
    origin.add("/twin1.bin", Resource(size=MIB, seed="twin"))
    origin.add("/twin2.bin", Resource(size=MIB, seed="twin"))
    a = download(_job(origin, "/twin1.bin", "4" * 32), daemon, blobs, OPTIONS)
    b = download(_job(origin, "/twin2.bin", "5" * 32), daemon, blobs, OPTIONS)
    assert a.path == b.path and len(list(blobs.iter_blobs())) == 1


def test_drop_mid_body_publishes_nothing_and_is_retryable(origin, daemon, blobs):
    origin.add("/drop.iso", Resource(size=3 * MIB, drop_after=2 * MIB + 777))
    with pytest.raises(DownloadError) as err:
        download(_job(origin, "/drop.iso", "6" * 32), daemon, blobs, OPTIONS)
    assert err.value.retryable
    _nothing_left(blobs, daemon)


def test_lying_content_length_publishes_nothing(origin, daemon, blobs):
    origin.add("/lie.iso", Resource(size=2 * MIB, extra_length=4096))
    with pytest.raises(DownloadError):
        download(_job(origin, "/lie.iso", "7" * 32), daemon, blobs, OPTIONS)
    _nothing_left(blobs, daemon)


@pytest.mark.parametrize("change_after", [1, 2])  # 1: every GET differs from the probe; 2: a torn file
def test_content_changed_after_probe_is_not_published(origin, daemon, blobs, change_after):
    path = f"/changing{change_after}.iso"
    origin.add(path, Resource(size=2 * MIB, change_after=change_after))
    job = _job(origin, path, "8" * 32)
    with pytest.raises(DownloadError) as err:
        download(job, daemon, blobs, OPTIONS)
    assert err.value.reason == "etag_changed" and not err.value.retryable
    _nothing_left(blobs, daemon)


def test_size_differs_from_probe(origin, daemon, blobs):
    origin.add("/resized.iso", Resource(size=MIB))
    with pytest.raises(DownloadError) as err:
        download(_job(origin, "/resized.iso", "9" * 32, size=MIB + 1), daemon, blobs, OPTIONS)
    assert err.value.reason == "size_changed" and not err.value.retryable
    _nothing_left(blobs, daemon)


@pytest.mark.parametrize("status,retryable", [(404, False), (500, True)])
def test_error_status(origin, daemon, blobs, status, retryable):
    origin.add(f"/e{status}.iso", Resource(size=MIB, status=status))
    with pytest.raises(DownloadError) as err:
        download(_job(origin, f"/e{status}.iso", "a" * 32, probe=False), daemon, blobs, OPTIONS)
    assert err.value.retryable is retryable
    _nothing_left(blobs, daemon)


def test_content_md5_checked(origin, daemon, blobs):
    origin.add("/md5ok.bin", Resource(size=MIB, content_md5=True))
    assert download(_job(origin, "/md5ok.bin", "b" * 32), daemon, blobs, OPTIONS).size == MIB
    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    origin.add("/md5bad.bin", Resource(size=MIB, content_md5=wrong))
    blobs2 = BlobStore(blobs.root / "second")
    with pytest.raises(DownloadError) as err:
        download(_job(origin, "/md5bad.bin", "c" * 32), daemon, blobs2, OPTIONS)
    assert err.value.reason == "content_md5_mismatch"
    _nothing_left(blobs2, daemon)


def test_pinned_addresses_connect_there_with_the_real_host(origin, daemon, blobs):
    origin.add("/pinned.bin", Resource(size=MIB))
    url = f"http://origin.invalid:{origin.port}/pinned.bin"  # .invalid never resolves
    job = _job(origin, "/pinned.bin", "d" * 32, url=url, addresses=["127.0.0.1"])
    got = download(job, daemon, blobs, OPTIONS)
    assert got.digest == origin.expected_digest("/pinned.bin")
    assert set(origin.stats("/pinned.bin").hosts[1:]) == {f"origin.invalid:{origin.port}"}


def test_leftover_temp_without_control_file_is_not_trusted(origin, daemon, blobs):
    origin.add("/stale.bin", Resource(size=MIB))
    blobs.new_temp_name("e" * 32).write_bytes(b"\0" * MIB)  # right size, wrong bytes, no .aria2 file
    got = download(_job(origin, "/stale.bin", "e" * 32), daemon, blobs, OPTIONS)
    assert got.digest == origin.expected_digest("/stale.bin") == file_digest(got.path)


BASE = {"key": "f" * 32, "url": "http://127.0.0.1:1/x.iso", "size": None, "etag": None,
        "last_modified": None, "content_type": None, "claim": "t"}


@pytest.mark.parametrize("bad", [
    {"key": "F" * 32}, {"key": "f" * 31}, {"key": "../../etc/passwd"}, {"key": None}, {"key": "f" * 64},
    {"url": "https://127.0.0.1/x.iso"}, {"url": "ftp://127.0.0.1/x"}, {"url": "file:///etc/passwd"},
    {"url": 'http://127.0.0.1/a"b.iso'}, {"url": "http://127.0.0.1/a\r\nHost: evil"},
    {"url": "http://127.0.0.1/a\nb"}, {"url": "http://127.0.0.1/a\x00b"}, {"url": "http://127.0.0.1/a b"},
    {"url": "http://127.0.0.1/é.iso"}, {"url": "http://user:pw@127.0.0.1/x"}, {"url": "http:///x"},
    {"url": "http://127.0.0.1:99999/x"}, {"url": "http://[::1/x"}, {"url": 42},
    {"size": -1}, {"size": "10"}, {"size": True}, {"etag": '"a"\r\nX: y'}, {"content_type": 5},
    {"addresses": ["not-an-ip"]}, {"addresses": "127.0.0.1"},
])
def test_hostile_job_rejected_before_disk_or_aria2(daemon, blobs, bad):
    with pytest.raises(DownloadError) as err:
        download({**BASE, **bad}, daemon, blobs, OPTIONS)
    assert err.value.reason == "bad_job" and not err.value.retryable
    _nothing_left(blobs, daemon)


def test_non_mapping_job_rejected(daemon, blobs):
    with pytest.raises(DownloadError):
        download(["not", "a", "job"], daemon, blobs, OPTIONS)


@pytest.mark.parametrize("bitfield,expected", [("", 0), ("00", 0), ("80", 1), ("c0", 2), ("f0", 4),
                                               ("ff", 8), ("fe", 7), ("ff80", 9), ("7f", 0), ("ffff", 10)])
def test_complete_prefix_counts_leading_pieces(bitfield, expected):
    assert _complete_prefix(bitfield, 10, 100) == expected * 10


class _HonestHeadRedirectingGet(BaseHTTPRequestHandler):
    """HEAD answers 200 with the size; GET answers 302 to `target` (an internal service)."""

    target = ""
    size = 0

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()

    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_redirect_during_download_publishes_nothing(daemon, blobs):
    """Seen failing on bb0220b: aria2 followed the 302 and the internal bytes were published."""
    with Origin() as internal:
        internal.add("/internal.bin", Resource(size=2 * MIB))
        _HonestHeadRedirectingGet.target = internal.url("/internal.bin")
        _HonestHeadRedirectingGet.size = 2 * MIB
        server = ThreadingHTTPServer(("127.0.0.1", 0), _HonestHeadRedirectingGet)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        try:
            job = {"key": "9" * 32, "url": f"http://127.0.0.1:{server.server_address[1]}/evil.iso",
                   "size": 2 * MIB, "etag": None, "last_modified": None, "content_type": None, "claim": "t"}
            with pytest.raises(DownloadError) as failed:
                download(job, daemon, blobs, OPTIONS)
        finally:
            server.shutdown()
            server.server_close()
    assert failed.value.reason == "redirected"
    _nothing_left(blobs, daemon)


def test_a_content_type_changed_after_the_probe_is_not_published(origin, daemon, blobs):
    """Seen failing on 34b94e0: the type of the last HEAD was stored unchecked (served as text/html)."""
    origin.add("/typed.iso", Resource(size=MIB, content_type="application/x-iso9660-image"))
    job = _job(origin, "/typed.iso", "7" * 32, etag=None, last_modified=None)  # the re-HEAD gets a 200
    origin.add("/typed.iso", Resource(size=MIB, content_type="text/html"))
    with pytest.raises(DownloadError) as failed:
        download(job, daemon, blobs, OPTIONS)
    assert failed.value.reason == "content_type_changed"
    _nothing_left(blobs, daemon)
