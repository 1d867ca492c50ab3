"""The embedded broker: kombu's filesystem transport, with messages that appear whole and
bindings kept per broker folder.

kombu's filesystem transport creates a message file in the queue folder and only then writes into
it; a consumer polling the folder can take the file in between and read it empty or half-written
(seen here under load as "Expecting value" JSON errors, and the message lost with it). Here a message
is written under a dot-name the consumers skip, then renamed into place: rename is atomic on one
filesystem, so a consumer sees either nothing or the whole message.

kombu also keeps exchange bindings in one process-wide state and skips writing a binding to the
folder's exchange table when that state has seen it before, even for another broker folder; a second
broker folder in the same process (tests, a capture node re-pointed) then silently receives no
fanout messages. The state is kept per control folder here.

kombu writes an exchange's bindings table (control/<exchange>.exchange, JSON) in place: a binder that
found no table truncates whatever another binder wrote in the meantime, and one that found a table
writes over it without truncating. Threads or processes binding to one exchange at once (Flower's
concurrent inspects each bind a reply queue) so lose bindings (a reply or fanout that never arrives)
or leave the table as invalid JSON, after which every publish to that exchange fails until the file
is deleted. Here each change to a table is made under one lock file per exchange and the new table is
renamed into place, so a reader sees the old table or the new one, whole.

kombu's consumer finds new messages by listing the folder every `polling_interval`, so a task
waits half an interval on average before it starts. Here a consumer with nothing to do waits on an
inotify watch of the queue folder instead, and wakes as soon as a message is renamed into it; the
interval stays as the upper bound of a wait (a missed event, a folder on a filesystem without
inotify, a platform without it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import select
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic

from kombu.transport import filesystem, virtual
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "cachetap.tasks.embedded_broker:Transport"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        # The leading dot keeps consumers off it: they only take "<stamp>.<queue>.msg" names.
        _write_whole(Path(self.data_folder_out) / name, payload,
                     f"Cannot add message {name!r} to {self.data_folder_out}")

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange):
            table = self.get_table(exchange)
            if binding not in table:
                self._replace_table(exchange, [binding, *table])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        # Past kombu's filesystem Channel (it rewrites the table in place) to the virtual one's purge.
        super(filesystem.Channel, self)._delete(queue, exchange, routing_key, pattern, *args, **kwargs)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange):
            table = self.get_table(exchange)
            if binding in table:
                self._replace_table(exchange, [entry for entry in table if entry != binding])

    @contextmanager
    def _table_lock(self, exchange) -> Iterator[None]:
        """Held while a bindings table is read and replaced: a separate file, as the table's own
        inode changes with every replacement."""
        table = self._exchange_file(exchange)
        table.parent.mkdir(exist_ok=True)
        fd = os.open(table.with_name(f".{table.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _replace_table(self, exchange, table) -> None:
        final = self._exchange_file(exchange)
        _write_whole(final, table, f"Cannot write the bindings table {final}")


def _write_whole(final: Path, payload, error: str) -> None:
    """Write `payload` as JSON to a dot-named file beside `final`, then rename it there: readers see
    no file or a whole one, never a partial write. One writer per `final` at a time (a message's name
    is unique, a table is written under its lock), so the partial's name needs nothing more."""
    partial = final.with_name(f".{final.name}.part")
    try:
        partial.write_bytes(str_to_bytes(dumps(payload)))
        os.replace(partial, final)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise filesystem.ChannelError(error) from exc


class FolderWatch:
    """Waits until a file is created in or moved into a folder (Linux inotify, through libc)."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80
    IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
    _libc = None

    def __init__(self, folder: str) -> None:
        libc = self._load_libc()
        self.fd = libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_CREATE | self.IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {folder}")

    @classmethod
    def _load_libc(cls):
        if cls._libc is None:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            if not hasattr(libc, "inotify_init1"):
                raise OSError("no inotify in this C library")
            cls._libc = libc
        return cls._libc

    def wait(self, timeout: float) -> None:
        """Return when something arrived since the last wait (at once if it already did) or after timeout."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if ready:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        os.close(self.fd)


def _worker_stopping() -> bool:
    """Whether this process is a Celery worker told to stop. Its loop (celery's synloop) checks that
    only between drains of 2 s each: ending those drains at once lets a warm shutdown begin then
    instead of 2-4 s later. celery.worker.state is only looked at, never imported, here."""
    state = sys.modules.get("celery.worker.state")
    # As celery's maybe_shutdown reads them: an exit code (0 too) means stop, None or False not.
    return state is not None and any(flag is not None and flag is not False
                                     for flag in (state.should_stop, state.should_terminate))


class Transport(filesystem.Transport):
    Channel = Channel
    _states: dict[str, virtual.BrokerState] = {}

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        folder = os.path.abspath(client.transport_options.get("control_folder", "control"))
        self.state = self._states.setdefault(folder, virtual.BrokerState())
        self._queue_folder = client.transport_options.get("data_folder_in", "data_in")
        self._watch: FolderWatch | None = None
        self._watch_failed = False

    def _folder_watch(self) -> FolderWatch | None:
        if self._watch is None and not self._watch_failed:
            try:
                self._watch = FolderWatch(self._queue_folder)
            except OSError:
                self._watch_failed = True  # polling alone, as kombu does
        return self._watch

    def drain_events(self, connection, timeout=None):
        """kombu's loop, with the sleep between empty polls replaced by a wait on the folder."""
        watch = self._folder_watch()
        if watch is None:
            return super().drain_events(connection, timeout)
        started = monotonic()
        # Only the main thread's drains end early: there the worker's loop drains (and once more after
        # the stop, from a `finally`); a consumer thread looping on drains after the stop waits as
        # before instead of spinning.
        may_stop = threading.current_thread() is threading.main_thread()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except virtual.Empty:
                elapsed = monotonic() - started
                if (timeout is not None and elapsed >= timeout) or (may_stop and _worker_stopping()):
                    raise socket.timeout()
                wait = self.polling_interval or 1.0
                watch.wait(wait if timeout is None else min(wait, timeout - elapsed))

    def close_connection(self, connection):
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        super().close_connection(connection)
