"""aria2's own word that a download changed state, so a waiting download() wakes at once.

download() polls aria2 (tellStatus) for progress, the bitfield its hasher follows and the end. Between
two polls it slept up to 0.2 s, and the first poll of a download always found no speed yet and slept
the whole interval: every download that ended between polls was noticed up to 0.2 s late (a fetch of
a 1 MiB object took 0.23 s where aria2 had it in 0.06 s). aria2 pushes a notification over a
WebSocket on its RPC port when a download completes, fails, stops or pauses; a thread here reads them
and wakes the waiter of that GID. Polling stays as it was: a lost connection or notification only
costs the old delay, never a missed end.

aria2 sends notifications to every WebSocket client of its RPC port without the RPC secret; they carry
only GIDs, and the port listens on loopback only.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import OrderedDict

import websocket

log = logging.getLogger(__name__)

# Events a waiter cares about: the download reached an end (or a pause someone else made).
_ENDINGS = {"aria2.onDownloadComplete", "aria2.onDownloadError", "aria2.onDownloadStop",
            "aria2.onDownloadPause", "aria2.onBtDownloadComplete"}
_REMEMBERED = 1024  # news of GIDs nobody waited on (yet); old ones are dropped first


class Aria2Events:
    """One WebSocket reader thread for one aria2c; `wait(gid, timeout)` returns early on news of `gid`."""

    def __init__(self, port: int) -> None:
        self._url = f"ws://127.0.0.1:{port}/jsonrpc"
        self._cond = threading.Condition()
        self._news: OrderedDict[str, None] = OrderedDict()
        self._ws: websocket.WebSocket | None = None
        self._thread = threading.Thread(target=self._run, name=f"aria2-events:{port}", daemon=True)

    def start(self) -> Aria2Events:
        try:
            self._ws = websocket.create_connection(self._url, timeout=5, enable_multithread=True)
            self._ws.settimeout(None)  # recv blocks until a notification or close()
        except (OSError, websocket.WebSocketException) as exc:
            log.warning("aria2 notifications unavailable (%s); downloads are noticed by polling", exc)
            return self
        self._thread.start()
        return self

    def wait(self, gid: str, timeout: float) -> bool:
        """Sleep up to `timeout`, less if aria2 reported on `gid` since the last wait; True on news."""
        with self._cond:
            # Without the reader (never connected, or aria2c gone) this is the plain sleep it replaces.
            if not self._cond.wait_for(lambda: gid in self._news, timeout):
                return False
            del self._news[gid]
            return True

    def forget(self, gid: str) -> None:
        with self._cond:
            self._news.pop(gid, None)

    def close(self) -> None:
        ws = self._ws
        if ws is None:
            return
        if self._thread.is_alive():
            # A proper close handshake: aria2c answers it (the reader's recv then ends); after a bare
            # shutdown it kept the session and took a second longer to exit on SIGTERM.
            try:
                ws.send_close()
            except (OSError, websocket.WebSocketException):
                pass
            self._thread.join(timeout=1)
        if ws.sock is not None:
            try:
                ws.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader if aria2c did not answer
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        ws.close()

    def _run(self) -> None:
        assert self._ws is not None
        try:
            while True:
                text = self._ws.recv()
                if not text:
                    return
                self._take(text)
        except (OSError, websocket.WebSocketException, ValueError):
            return  # aria2c stopped or the socket was shut: polling carries on alone

    def _take(self, text: str | bytes) -> None:
        try:
            message = json.loads(text)
            gid = message["params"][0]["gid"] if message.get("method") in _ENDINGS else None
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return
        if not isinstance(gid, str):
            return
        with self._cond:
            self._news[gid] = None
            self._news.move_to_end(gid)
            while len(self._news) > _REMEMBERED:
                self._news.popitem(last=False)
            self._cond.notify_all()
