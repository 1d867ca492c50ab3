"""Child processes that must not outlive their parent (aria2c, cache server workers, the children of
`cachetap run`)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send this process `sig` (default SIGTERM, a graceful stop) the moment its
    parent dies.

    Call it in the child. The signal follows the parent *thread* that created the child, so create
    children from a thread that lives as long as the process. If the parent is already gone when this
    runs, no signal would ever come: stop now.
    """
    _prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def process_tag() -> str:
    """"<hostname>:<pid>" of this process: who holds a claim (store column `claimed_by`)."""
    return f"{socket.gethostname()[:50]}:{os.getpid()}"


def tag_is_dead(tag: str | None) -> bool:
    """True only when `tag` names a process on this machine that no longer exists (a claim held by
    another machine, or by a live process, is not ours to judge)."""
    host, _, pid = (tag or "").rpartition(":")
    if host != socket.gethostname()[:50] or not pid.isdigit():
        return False
    return not pid_is_alive(int(pid))


def pid_is_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs (another user's counts; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)  # killed, but not reaped yet by a parent that does not wait


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X")
