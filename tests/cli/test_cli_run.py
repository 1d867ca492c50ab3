"""`cachetap run`: every process starts on embedded defaults and a SIGTERM stops them all."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cachetap.testing.waiting import free_port, wait_for

CACHETAP = str(Path(sys.executable).with_name("cachetap"))


def start_run(cache_dir, **settings: str) -> tuple[subprocess.Popen, dict[str, str]]:
    """`cachetap run` with CACHETAP_* `settings`, once its cache server answers; also its environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(CACHETAP_CACHE_DIR=str(cache_dir), CACHETAP_SERVE_HOST="127.0.0.1", CACHETAP_SERVE_PORT=str(port),
               CACHETAP_CONSOLE_PORT=str(free_port()),
               **{f"CACHETAP_{k.upper()}": v for k, v in settings.items()})
    proc = subprocess.Popen([sys.executable, "-m", "cachetap", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def healthy():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # ended: the caller's assertions say how
    wait_for(healthy, "the cache server to answer", timeout=120, step=0.5)
    return proc, env


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_watched(tmp_path):
    """`cachetap run` (children as the invoking user) once its workers and beat run: (proc, env, children)."""
    proc, env = start_run(tmp_path / "cache", run_as_user="")  # tmp_path: only root can reach it
    parent = psutil.Process(proc.pid)
    cmdlines = lambda: [" ".join(p.cmdline()) for p in parent.children(recursive=True)]  # noqa: E731
    wait_for(lambda: sum("worker" in c for c in cmdlines()) >= 3 and any(" beat" in c for c in cmdlines()),
             "three workers and beat", timeout=120, step=0.5)
    return proc, env, parent.children(recursive=True)


def test_run_starts_quietly_refuses_a_second_instance_and_stops_within_3s_on_sigterm(tmp_path):
    proc, env, children = start_watched(tmp_path)
    try:
        assert (tmp_path / "cache" / "catalog.sqlite").exists()
        second = subprocess.run([CACHETAP, "run"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip() == (f"Error: cachetap is already running on {tmp_path / 'cache'} "
                                         f"(pid {proc.pid}); stop it first or give this one another cache_dir")
        console = f"http://127.0.0.1:{env['CACHETAP_CONSOLE_PORT']}"
        wait_for(lambda: _answers(f"{console}/api/overview"), "the console", timeout=120, step=0.5)
        time.sleep(2)  # let every child finish starting and say whatever it says
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
        stopped_in = time.monotonic() - started
        gone, alive = psutil.wait_procs(children, timeout=max(0.1, 3.0 - stopped_in))
        print(f"stopped in {stopped_in:.2f}s; output:\n{output}")
        assert proc.returncode == 0, output
        assert not alive, [p.cmdline() for p in alive]
        assert stopped_in < 3.0, output
        assert " ERROR " not in output and "ERROR/" not in output and "Traceback" not in output, output
        lines = [line for line in output.splitlines() if line.strip()]
        assert lines[0].startswith("cachetap ") and f"data     {tmp_path / 'cache'}" in output
        assert "capture  off (no interface" in output and "cache    http://127.0.0.1:" in output
        assert f"console  {console}/" in output
        # The summary and one closing line: no banners, plugin logs or Celery's shutdown notes.
        assert len(lines) == 8, output
        assert "Cold shutdown" not in output and "Hitting Ctrl+C" not in output, output
        said = re.fullmatch(r"stopped in (\d+\.\d) s", lines[-1])
        assert said and float(said[1]) <= stopped_in + 0.05, output
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kill_9_of_run_leaves_no_child_behind(tmp_path):
    proc, env, children = start_watched(tmp_path)
    assert len(children) >= 5
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=3)
    assert not alive, [p.cmdline() for p in alive]
    again, env, children = start_watched(tmp_path)  # the lock died with it: a new run starts at once
    again.send_signal(signal.SIGTERM)
    again.communicate(timeout=60)
    psutil.wait_procs(children, timeout=5)


@pytest.mark.skipif(os.geteuid() != 0, reason="capturing on lo needs root or CAP_NET_RAW")
def test_kill_9_of_capture_leaves_no_child_behind(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(CACHETAP_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([CACHETAP, "capture", "-i", "lo"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()[0]
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs(children, timeout=3)
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_child_that_exits_with_a_config_error_is_not_restarted():
    from cachetap.supervisor import EXIT_CONFIG, Child, Supervisor

    crashing = Child("crashing", [sys.executable, "-c", "raise SystemExit(3)"])
    misconfigured = Child("capture", [sys.executable, "-c", f"raise SystemExit({EXIT_CONFIG})"])
    supervisor = Supervisor([crashing, misconfigured], max_backoff=0.2)
    for child in supervisor.children:
        supervisor._start(child)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        supervisor._watch()
        time.sleep(0.05)
    assert crashing.restarts >= 3
    assert misconfigured.restarts == 0 and misconfigured.process is None
    supervisor._stop_all()


def test_run_with_bad_config_fails_naming_the_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(CACHETAP_CACHE_DIR=str(tmp_path), CACHETAP_ADMISSION_WINDOW="-5")
    result = subprocess.run([sys.executable, "-m", "cachetap", "run"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "admission_window" in result.stderr and "Traceback" not in result.stderr


CAPTURE_CAPS = (1 << 13) | (1 << 23)  # CAP_NET_RAW, CAP_SYS_NICE


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)


def test_run_as_root_drops_every_child_but_capture_to_the_service_user(tmp_path):
    """Seen failing on bb0220b: workers, beat and the cache server (on every address) ran as root."""
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root: the test is about what cachetap does when started as root")
    cache = tempfile.mkdtemp(prefix="cachetap-privileges-", dir="/tmp")  # the user must reach it
    proc, env = start_run(cache, interface="lo", http_ports="[80]")
    try:
        service = pwd.getpwnam("cachetap")
        parent = psutil.Process(proc.pid)
        cmdlines = lambda: [" ".join(p.cmdline()) for p in parent.children(recursive=True)]  # noqa: E731
        wait_for(lambda: sum("worker" in c for c in cmdlines()) >= 3 and any(" capture" in c for c in cmdlines()),
                 "three workers and the capture", timeout=120, step=0.5)
        seen = {}
        for child in parent.children(recursive=True):
            status = _status(child.pid)
            seen[" ".join(child.cmdline())[-60:]] = (int(status["Uid"].split()[1]),
                                                      int(status["CapEff"], 16), int(status["CapAmb"], 16))
        capture = [v for k, v in seen.items() if k.endswith(" capture")]
        others = [v for k, v in seen.items() if not k.endswith(" capture")]
        assert capture == [(service.pw_uid, CAPTURE_CAPS, CAPTURE_CAPS)], seen
        assert others and all(v == (service.pw_uid, 0, 0) for v in others), seen
        # A CLI command run as root meanwhile leaves nothing root's in cache_dir.
        listed = subprocess.run([sys.executable, "-m", "cachetap", "ls"], env=env, capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, output
        owned_by_root = [str(p) for p in Path(cache).rglob("*") if p.lstat().st_uid == 0]
        assert owned_by_root == [] and Path(cache).stat().st_uid == service.pw_uid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(cache, ignore_errors=True)
