"""Child processes that must not outlive their parent (aria2c, cache server workers, the children of
`cachetap run`)."""

from __future__ import annotations

import ctypes
import os
import signal

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
