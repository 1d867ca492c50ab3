"""Why an entry is or is not handed out, as `cachetap ls` says it."""

from cachetap.core.serving import Serving, duration, serving

NOW = 1_000_000.0


def test_ready_and_fresh_is_served():
    assert serving("ready", NOW + 7200, None, None, NOW, 60) == Serving(True, "fresh for 2h")
    assert serving("ready", None, None, None, NOW, 60) == Serving(True, "fresh")


def test_stale_revalidating_and_failed_name_the_reason():
    assert serving("ready", NOW - 120, None, None, NOW, 60) == Serving(False, "stale for 2m")
    assert serving("ready", NOW - 1, NOW - 5, None, NOW, 60) == Serving(False, "revalidating")
    # a revalidation whose worker vanished is not shown as running
    assert serving("ready", NOW - 100, NOW - 90, None, NOW, 60).why == "stale for 2m"
    assert serving("ready", NOW - 5, None, "revalidation: HTTP 503", NOW, 60).why == "stale for 5s, revalidation: HTTP 503"
    assert serving("failed", None, None, "probe: probe_status_404", NOW, 60) == Serving(False, "failed: probe: probe_status_404")
    assert serving("rejected", None, None, None, NOW, 60).why == "rejected: no reason recorded"
    assert serving("downloading", None, NOW, None, NOW, 60) == Serving(False, "downloading")


def test_duration():
    assert [duration(s) for s in (-3, 59, 61, 3600 * 5, 86_400 * 3)] == ["0s", "59s", "1m", "5h", "3d"]
