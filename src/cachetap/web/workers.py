"""Run the cache server until SIGTERM/SIGINT, in one process or in N forked workers.

Each worker binds its own socket with SO_REUSEPORT, so the kernel spreads connections evenly
over the workers (one shared accept socket lets the busiest process win most accepts).
A worker that dies is replaced: the cache server must keep answering (fail-open, docs/internals.md).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from cachetap.lifetime import die_with_parent
from cachetap.metrics import enable_multiprocess, multiprocess_directory
from cachetap.web.limits import raise_open_files_limit
from cachetap.web.lookup import ObjectLookup
from cachetap.web.server import CacheServer

log = logging.getLogger(__name__)


async def _serve_with_signals(server: CacheServer, on_ready: Callable[[int], None] | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop_soon)
    if server.access_log is not None:  # logrotate moved the file: write to a new one (as nginx does)
        loop.add_signal_handler(signal.SIGUSR1, server.access_log.reopen)
    await server.serve_forever(on_ready)


def run_server(host: str, port: int, lookup: ObjectLookup, processes: int = 1, *,
               on_ready: Callable[[int], None] | None = None,
               in_each_process: Callable[[int], Any] | None = None, **options: Any) -> None:
    """Block serving until SIGTERM or SIGINT; `on_ready(port)` once every worker listens.

    `in_each_process(slot)` runs at the start of each serving process (slot 0..processes-1; a
    replaced worker gets its predecessor's slot), for threads a fork would not carry over.
    `options` go to CacheServer (head_timeout, send_timeout, grace).
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    raise_open_files_limit()  # before the connection caps are sized from it (workers inherit it)
    if processes == 1:
        if in_each_process is not None:
            in_each_process(0)
        asyncio.run(_serve_with_signals(CacheServer(lookup, host, port, **options), on_ready))
        return
    if multiprocess_directory() is not None:  # the machine's folder (cachetap serve)
        _run_workers(host, port, lookup, processes, on_ready, options, in_each_process)
        return
    metrics_dir = tempfile.mkdtemp(prefix="cachetap-metrics-")
    enable_multiprocess(metrics_dir)
    try:
        _run_workers(host, port, lookup, processes, on_ready, options, in_each_process)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) to learn the port when 0 was asked; workers then share it."""
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock, sock.getsockname()[1]


def _worker(lookup: ObjectLookup, host: str, port: int, options: dict[str, Any], ready: Any,
            master: int, slot: int, in_each_process: Callable[[int], Any] | None) -> None:
    die_with_parent(master)  # a master killed with SIGKILL must not leave workers holding the port
    if in_each_process is not None:
        in_each_process(slot)
    server = CacheServer(lookup, host, port, reuse_port=True, **options)
    asyncio.run(_serve_with_signals(server, lambda _port: ready.put(os.getpid())))


def _run_workers(host: str, port: int, lookup: ObjectLookup, processes: int,
                 on_ready: Callable[[int], None] | None, options: dict[str, Any],
                 in_each_process: Callable[[int], Any] | None = None) -> None:
    reservation, port = _reserve_port(host, port)
    context = multiprocessing.get_context("fork")  # workers inherit the lookup as it is
    ready = context.Queue()
    stopping = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: list[multiprocessing.process.BaseProcess] = []

    def forward(signum: int, _frame: object) -> None:  # USR1: each worker reopens its access log
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, forward)

    def spawn(slot: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(lookup, host, port, options, ready, os.getpid(), slot,
                                                        in_each_process),
                                  name="cachetap-serve", daemon=True)
        process.start()
        return process

    workers.extend(spawn(slot) for slot in range(processes))
    try:
        started = 0
        while started < processes and not stopping:
            try:
                ready.get(timeout=0.5)
                started += 1
            except queue.Empty:
                if not all(w.is_alive() for w in workers):
                    raise RuntimeError(f"a cache server worker failed to start on {host}:{port}") from None
        reservation.close()
        if on_ready is not None and not stopping:
            on_ready(port)
        while not stopping:
            multiprocessing.connection.wait([w.sentinel for w in workers], timeout=0.5)
            for index, worker in enumerate(workers):
                if not worker.is_alive() and not stopping:
                    log.error("cache server worker %s exited with %s; starting another", worker.pid,
                              worker.exitcode)
                    time.sleep(0.5)  # no tight restart loop if it dies at once again
                    workers[index] = spawn(index)
    finally:
        reservation.close()
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: graceful stop in the worker
        grace = float(options.get("grace", 10.0)) + 5.0
        for worker in workers:
            worker.join(grace)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
