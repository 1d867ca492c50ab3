"""Who holds a claim, and whether that process is gone (real processes)."""

import signal
import socket
import subprocess
import sys
import time

from cachetap.lifetime import process_tag, tag_is_dead


def test_a_live_process_a_dead_one_a_zombie_and_another_machine():
    assert not tag_is_dead(process_tag())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tag = f"{socket.gethostname()[:50]}:{child.pid}"
    assert not tag_is_dead(tag)
    child.send_signal(signal.SIGKILL)
    time.sleep(0.3)
    assert tag_is_dead(tag)  # killed, not reaped yet: a zombie counts as dead
    child.wait()
    assert tag_is_dead(tag)
    assert not tag_is_dead(f"elsewhere.test:{child.pid}")
    assert not tag_is_dead(None) and not tag_is_dead("garbage")
