"""run_server as a real process: SO_REUSEPORT workers, summed metrics, SIGTERM, flat memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachetap.web.lookup import directory_key


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.fixture
def sparse_dir(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    with open(root / "huge.img", "wb") as fh:
        fh.truncate(512 << 20)  # sparse: no disk used, and no page cache needed for the zeros
    (root / "small.bin").write_bytes(b"x" * 100_000)
    return root


@pytest.fixture
def workers(sparse_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen([sys.executable, "-m", "cachetap.web", "--dir", str(sparse_dir), "--port", "0",
                                "--processes", "2"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield process, line.split()[-1]
    finally:
        if process.poll() is None:
            process.terminate()  # a graceful stop takes the workers down too
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-sS", "--max-time", "120", *args], capture_output=True, text=True,
                          check=True).stdout


def test_workers_serve_count_together_and_stop_on_sigterm(workers):
    process, base = workers
    assert len(children(process.pid)) == 2
    small = f"{base}/c/{directory_key('small.bin')}/small.bin"
    for _ in range(40):  # new connections each time: the kernel spreads them over both workers
        assert curl("-o", "/dev/null", "-w", "%{http_code}", small) == "200"
    text = curl(f"{base}/metrics")
    assert 'cachetap_serve_requests_total{status="200"} 40.0' in text
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def test_memory_does_not_grow_with_file_size_or_clients(workers):
    process, base = workers
    huge = f"{base}/c/{directory_key('huge.img')}/huge.img"
    curl("-o", "/dev/null", f"{base}/c/{directory_key('small.bin')}/small.bin")
    pids = children(process.pid)
    before = sum(rss_kib(pid) for pid in pids)
    for _ in range(2):
        assert curl("-o", "/dev/null", "-w", "%{size_download}", huge) == str(512 << 20)
    parallel = ["-Z", "--parallel-max", "32"] + ["-o", "/dev/null", "-r", "0-8388607", huge] * 64
    curl(*parallel)
    after = sum(rss_kib(pid) for pid in pids)
    # Reading bodies into memory would cost hundreds of MiB here; allow for allocator noise only.
    assert after - before < 24 * 1024, (before, after)


def test_a_dead_worker_is_replaced(workers):
    import os
    import time

    process, base = workers
    victim = children(process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60  # a bound for a hung test, not a speed assertion
    while time.monotonic() < deadline:
        current = children(process.pid)
        if len(current) == 2 and victim not in current:
            break
        time.sleep(0.1)
    assert len(children(process.pid)) == 2 and victim not in children(process.pid)
    small = f"{base}/c/{directory_key('small.bin')}/small.bin"
    assert all(curl("-o", "/dev/null", "-w", "%{http_code}", small) == "200" for _ in range(10))


def test_workers_die_with_a_master_killed_outright(workers):
    process, _base = workers
    pids = children(process.pid)
    assert len(pids) == 2
    process.kill()
    process.wait()
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
