"""The aria2c daemon: real process, real RPC, real kills."""

import os
import signal
import threading

import aria2p
import pytest

from cachetap.fetch.aria2 import Aria2Daemon, Aria2Error, Aria2Options
from cachetap.fetch.download import download
from cachetap.settings import Settings
from cachetap.store.blobs import BlobStore, file_digest
from cachetap.testing.origin import Origin, Resource
from cachetap.testing.waiting import wait_for

MIB = 1 << 20
OPTIONS = Aria2Options(split=4, max_connection_per_server=4, max_tries=3, retry_wait=0, timeout=10)


def test_start_answers_rpc_with_secret_and_stops(tmp_path):
    daemon = Aria2Daemon(tmp_path, OPTIONS).start()
    try:
        assert daemon.running() and daemon.client.get_version()["version"].startswith("1.")
        port = daemon.client.port
        with pytest.raises(aria2p.ClientException):
            aria2p.Client(host="http://127.0.0.1", port=port, secret="wrong").get_version()
        assert daemon.client.get_global_option()["max-concurrent-downloads"] == "4"
    finally:
        daemon.stop()
    assert not daemon.running()
    with pytest.raises(Aria2Error):
        daemon.client


def _end_is_reported(daemon, origin, out):
    """download() sleeps between status polls on aria2's notifications: without them every download
    that ends between two polls is noticed up to a poll interval late."""
    gid = daemon.client.add_uri([origin.url("/small.iso")], {"dir": str(out.parent), "out": out.name})
    assert daemon.wait_for_news(gid, timeout=60), "aria2 sent no notification of the end"
    assert daemon.client.tell_status(gid, ["status"])["status"] == "complete"
    assert not daemon.wait_for_news(gid, timeout=0.01)  # taken once


def test_ensure_running_restarts_after_sigkill_and_reports_again(tmp_path):
    with Origin() as origin, Aria2Daemon(tmp_path, OPTIONS) as daemon:
        origin.add("/small.iso", Resource(size=64 * 1024))
        assert daemon.ensure_running() is False
        _end_is_reported(daemon, origin, tmp_path / "first.iso")
        first = daemon.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not daemon.running(), "aria2c to die")
        assert daemon.ensure_running() is True
        assert daemon.pid != first and daemon.restarts == 1
        daemon.client.get_version()
        _end_is_reported(daemon, origin, tmp_path / "restarted.iso")  # the new aria2c's notifications


def test_missing_executable_is_a_clear_error(tmp_path):
    with pytest.raises(Aria2Error, match="not found"):
        Aria2Daemon(tmp_path, executable=str(tmp_path / "no-aria2c")).start()


def test_options_from_settings():
    s = Settings(download_split=8, download_connections_per_server=2, download_retries=7)
    o = Aria2Options.from_settings(s)
    assert (o.split, o.max_connection_per_server, o.max_tries) == (8, 2, 7)
    assert o.per_download()["split"] == "8"


@pytest.fixture
def slow_origin():
    with Origin() as o:
        # 4 connections x 512 KB/s: about 4 s for 8 MiB, plenty of time to kill aria2 mid-way.
        o.add("/resume.iso", Resource(size=8 * MIB, rate=512_000))
        yield o


def _job(origin):
    return {"key": "0" * 32, "url": origin.url("/resume.iso"), "size": 8 * MIB, "etag": None,
            "last_modified": None, "content_type": None, "claim": "t"}


def test_sigkill_mid_download_resumes_and_completes(tmp_path, slow_origin):
    blobs = BlobStore(tmp_path / "cache")
    control = blobs.new_temp_name("0" * 32).with_name("0" * 32 + ".part.aria2")
    result = {}
    with Aria2Daemon(tmp_path / "aria2", OPTIONS) as daemon:
        def run():
            try:
                result["ok"] = download(_job(slow_origin), daemon, blobs, OPTIONS)
            except Exception as exc:  # reported below
                result["error"] = exc
        worker = threading.Thread(target=run)
        worker.start()
        wait_for(lambda: control.exists() and slow_origin.stats("/resume.iso").body_bytes > 3 * MIB,
                  "a control file and 3 MiB on the wire")
        os.kill(daemon.pid, signal.SIGKILL)
        worker.join(timeout=120)
        assert "error" not in result, result
        assert daemon.restarts == 1
    got = result["ok"]
    assert got.digest == slow_origin.expected_digest("/resume.iso") == file_digest(got.path)
    # Resumed, not restarted: far less than a second full copy crossed the wire.
    assert slow_origin.stats("/resume.iso").body_bytes < 8 * MIB + 5 * MIB


class WorkerKilled(BaseException):
    """Stands in for a worker dying mid-task (not an Exception, so nothing is cleaned up)."""


def test_new_daemon_picks_up_a_dead_workers_download_from_its_session(tmp_path, slow_origin):
    blobs = BlobStore(tmp_path / "cache")
    work = tmp_path / "aria2"

    def die_after_3mib(done, total, speed):
        if done > 3 * MIB:
            raise WorkerKilled

    first = Aria2Daemon(work, OPTIONS).start()
    with pytest.raises(WorkerKilled):
        download(_job(slow_origin), first, blobs, OPTIONS, on_progress=die_after_3mib)
    wait_for(lambda: "0" * 32 + ".part" in first.session_file.read_text() if first.session_file.exists() else False,
              "the session file to name the download")
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not first.running(), "the first aria2c to die")
    first.stop()
    with Aria2Daemon(work, OPTIONS) as second:
        restored = second.client.tell_active(["gid"]) + second.client.tell_waiting(0, 10, ["gid"])
        assert len(restored) == 1  # from the session file
        got = download(_job(slow_origin), second, blobs, OPTIONS)
        assert second.client.tell_stopped(0, 10, ["gid"]) == []
    assert got.digest == slow_origin.expected_digest("/resume.iso") == file_digest(got.path)
    assert slow_origin.stats("/resume.iso").body_bytes < 8 * MIB + 5 * MIB
