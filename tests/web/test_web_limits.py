"""Floods against a real cache server: half-open connections, one address taking every slot, and
running out of file descriptors. The tests lower this process's open-files limit themselves (it is
20,000 here, more than a test can exhaust), as systemd's default of 1024 would."""

from __future__ import annotations

import logging
import os
import resource
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

from conftest import Served, exchange, parse_responses
from cachetap.web.lookup import DirectoryLookup
from cachetap.web.server import CacheServer

FLOODER = """
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(int(sys.argv[2])):
    held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
print("open", flush=True)
time.sleep(60)
"""


@contextmanager
def open_files_limit(soft: int):
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def get_file(port: int, path: str, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def test_half_open_connections_do_not_starve_real_clients(served: Served, caplog):
    """Seen failing on bb0220b: with 300 idle connections from one address and 250 descriptors, a
    client from another address got no answer, and asyncio logged a traceback per failed accept."""
    root = served.root
    with open_files_limit(open_fds() + 250):
        server = CacheServer(DirectoryLookup(root), head_timeout=30, max_connections_per_address=100).start()
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(server.port), "300"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            with caplog.at_level(logging.WARNING):
                assert flooder.stdout.readline().strip() == "open"  # the kernel's backlog took them all
                time.sleep(1.5)
                (answer,) = parse_responses(get_file(server.port, served.path(), source="127.0.0.2"))
            assert answer.status == 200 and answer.body == served.data
            assert len(caplog.records) <= 5, [r.getMessage() for r in caplog.records[:5]]
            assert server.caps.open <= server.caps.total < 250
        finally:
            flooder.kill()
            flooder.wait()
            server.stop()


def test_one_address_gets_at_most_its_share(served: Served):
    with CacheServer(DirectoryLookup(served.root), max_connections_per_address=5) as server:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(8)]
        answered = 0
        for sock in held:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answered += sock.recv(100).startswith(b"HTTP/1.1 200")
            except (ConnectionResetError, BrokenPipeError):
                pass
        assert answered == 5
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").endswith(b"ok")


def test_running_out_of_descriptors_is_not_a_missing_file(served: Served):
    """Seen failing on bb0220b: EMFILE on opening the file counted as file_missing and forgot the key."""
    server = served.server
    client = socket.socket()  # made before the descriptors run out; connecting needs none here
    client.settimeout(10)
    filler = []
    with open_files_limit(open_fds() + 20):
        try:
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        os.close(filler.pop())  # exactly one left: for the server's accept
        client.connect(("127.0.0.1", server.port))
        client.sendall(f"GET {served.path()} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = client.recv(1 << 16)
        for fd in filler:
            os.close(fd)
    client.close()
    assert reply.startswith(b"HTTP/1.1 302"), reply[:200]  # sent to the origin, the download goes on
    fallbacks = {s.labels["reason"]: s.value for m in server.metrics.fallbacks.collect()
                 for s in m.samples if s.name.endswith("_total")}
    assert fallbacks == {"out_of_descriptors": 1.0}
    (answer,) = parse_responses(get_file(server.port, served.path()))
    assert answer.status == 200 and answer.body == served.data
