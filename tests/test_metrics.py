"""One metrics folder per machine: real processes write to it, one exposition sums them; gauges of
processes that are gone drop out, their counters stay; `cachetap run` starts from zero."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from cachetap.metrics import box_directory, clear_box_directory

WRITER = """
import sys
from pathlib import Path
from cachetap import metrics
metrics.use_box_directory(Path(sys.argv[1]))
metrics.download().bytes.inc(int(sys.argv[2]))
metrics.download().active.inc()
print("written", flush=True)
sys.stdin.read()  # stay alive until told
"""
EXPOSE = """
import sys
from pathlib import Path
from cachetap import metrics
metrics.use_box_directory(Path(sys.argv[1]))
sys.stdout.write(metrics.exposition().decode())
"""


def writer(cache_dir, nbytes: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(cache_dir), str(nbytes)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    return proc


def exposed(cache_dir) -> dict[str, float]:
    text = subprocess.run([sys.executable, "-c", EXPOSE, str(cache_dir)], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels}


def test_processes_of_a_machine_are_summed_and_the_dead_ones_gauges_dropped(tmp_path):
    gone, alive = writer(tmp_path, 1000), writer(tmp_path, 234)
    gone.communicate("", timeout=60)  # exits
    try:
        figures = exposed(tmp_path)
        assert figures["cachetap_download_bytes_total"] == 1234
        assert figures["cachetap_download_active"] == 1  # only the process still running
    finally:
        alive.communicate("", timeout=60)
    assert "cachetap_download_active" not in exposed(tmp_path)  # no live process reports it any more
    assert (box_directory(tmp_path).stat().st_mode & 0o777) == 0o700
    clear_box_directory(tmp_path)
    assert "cachetap_download_bytes_total" not in exposed(tmp_path)



RACE = """
import sys, threading
sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible: the race shows every time
from cachetap import metrics
start, got, errors = threading.Barrier(8), [], []
def ask():
    start.wait()
    try:
        got.append(metrics.download())
    except Exception as exc:
        errors.append(type(exc).__name__)
threads = [threading.Thread(target=ask) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(errors, len({id(m) for m in got}))
"""


def test_components_metrics_are_made_once_when_threads_ask_together():
    """A download worker's thread pool asks for the download metrics from several threads at once
    (with functools.cache all but one got DuplicateTimeseries, failing their downloads)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "1"]
