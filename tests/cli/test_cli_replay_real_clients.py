"""Capture real clients (curl, wget, aria2c, Python) with tcpdump, then `cachetap replay` the file."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from cachetap.testing.origin import Origin, Resource

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="tcpdump needs root (CAP_NET_RAW) to capture on loopback"),
    pytest.mark.skipif(not shutil.which("tcpdump"), reason="tcpdump is not installed (./dev.sh test installs it)"),
]


def start_tcpdump(interface, port, path):
    proc = subprocess.Popen(["tcpdump", "-i", interface, "-U", "--immediate-mode", "-s", "0", "-w", str(path), f"tcp dst port {port}"],
                            stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        while not seen or "listening on" not in seen[-1]:  # printed once the socket is open
            seen.append(proc.stderr.readline())
            assert seen[-1], seen
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def stop_tcpdump(proc):
    time.sleep(0.5)  # immediate mode hands each frame over at once; this covers the clients' last ACKs
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def run_clients(origin, tmp_path):
    url = origin.url("/pub/disk-image.iso")
    subprocess.run(["curl", "-sS", "-o", os.devnull, "-r", "0-99", "-A", "curl-test", url], check=True, timeout=60)
    subprocess.run(["wget", "-q", "-O", os.devnull, "-U", "wget-test", url], check=True, timeout=60)
    subprocess.run(["aria2c", "-q", "-x1", "-s1", "--dir", str(tmp_path), "-o", "a.iso", "-U", "aria2-test",
                    "--allow-overwrite=true", url], check=True, timeout=60)
    request = urllib.request.Request(url, headers={"Range": "bytes=10-20", "User-Agent": "python-test"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
    return url


@pytest.mark.parametrize("interface, linktype", [("lo", "ethernet"), ("any", "sll2")])
def test_replay_of_real_clients(tmp_path, interface, linktype):
    capture = tmp_path / f"{linktype}.pcap"
    with Origin() as origin:
        port = origin.port
        origin.add("/pub/disk-image.iso", Resource(size=2 << 20))
        dump = start_tcpdump(interface, origin.port, capture)
        try:
            url = run_clients(origin, tmp_path)
        finally:
            stop_tcpdump(dump)
    if linktype == "sll2":
        assert capture.read_bytes()[20:24] == (276).to_bytes(4, "little"), "tcpdump -i any writes SLL2"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(CACHETAP_CACHE_DIR=str(tmp_path / "cache"), CACHETAP_HTTP_PORTS=json.dumps([port]))
    result = subprocess.run([sys.executable, "-m", "cachetap", "replay", "--dry-run", str(capture)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    requests = {r["user_agent"]: r for r in lines[:-1]}
    assert {"curl-test", "wget-test", "aria2-test", "python-test"} <= set(requests), lines
    for agent, req in requests.items():
        assert req["host"] == f"127.0.0.1:{port}"
        assert req["target"] == "/pub/disk-image.iso"
        assert req["url"] == url
        assert req["client"] == "127.0.0.1" and req["server"] == "127.0.0.1"
        assert req["decision"] == "count"
    assert requests["curl-test"]["range"] == "bytes=0-99"
    assert requests["python-test"]["range"] == "bytes=10-20"
    assert requests["wget-test"]["range"] is None
    assert len({r["key"] for r in requests.values()}) == 1
    summary = lines[-1]["summary"]
    assert not {k: v for k, v in summary["rejected"].items() if k != "retransmission"}, summary
