"""The capture pipeline as a playbook: frames in, decisions out, no socket of our own and no privileges.

In the style of mitmproxy's Playbook: `playbook >> frames` feeds real Ethernet frames (built by
cachetap.testing.pcaps), `playbook << decision` says what must come out at that point, and
`assert playbook` plays the script and compares transcripts. The clock the loop guard reads is
the playbook's own, moved with `playbook.at(t)`. The one real service is a cache server on
loopback, so the health gate asks a real server whether it answers.

Run as root, `test_the_playbook_needs_no_privileges` plays this whole file again in a process that
holds no capability at all (setpriv empties its bounding set), where a raw socket is refused. As a
plain user (e.g. nobody) the file passes the same way.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from cachetap.capture.health import HealthGate
from cachetap.capture.hotindex import HotIndex
from cachetap.capture.pipeline import Pipeline, counts
from cachetap.capture.redirector import RedirectScope, Redirector
from cachetap.core.keys import cache_key, canonical_url
from cachetap.core.types import Count, Decision, Ignore, Redirect
from cachetap.core.urls import hint_signature
from cachetap.settings import load_settings
from cachetap.testing.pcaps import LINKTYPE_ETHERNET, frame_bytes, hostile_cases, http_get_packets
from cachetap.web.lookup import DirectoryLookup
from cachetap.web.server import CacheServer

CLIENT, ORIGIN, HOST = "10.0.0.5", "93.184.216.34", "cdn.example.org"
CACHE = "http://10.0.0.1:8642"
READY_URL = canonical_url("/games/patch%201.pak", HOST, 80)
READY = cache_key(READY_URL, {})
SECRET = b"s" * 32  # signs the origin hint (core/urls.py)
LOCATION = (f"{CACHE}/c/{READY}/patch%201.pak?o=http%3A%2F%2Fcdn.example.org%2Fgames%2Fpatch%25201.pak"
            f"&s={hint_signature(SECRET, READY, READY_URL)}")


class Playbook:
    """A script of frames in (`>>`) and decisions out (`<<`), played against one Pipeline."""

    def __init__(self, pipeline: Pipeline, clock: list[float]) -> None:
        self.pipeline, self.clock = pipeline, clock
        self.script: list[tuple[str, object]] = []
        self.observations = []

    def __rshift__(self, packets: Sequence) -> Playbook:
        self.script.append(("in", list(packets)))
        return self

    def __lshift__(self, decision: Decision) -> Playbook:
        self.script.append(("out", decision))
        return self

    def at(self, now: float) -> Playbook:
        self.script.append(("clock", now))
        return self

    def transcript(self) -> tuple[list, list]:
        expected, actual = [], []
        for kind, value in self.script:
            if kind == "clock":
                self.clock[0] = value
            elif kind == "out":
                expected.append(value)
            else:
                expected.append(f"{len(value)} frames")
                actual.append(f"{len(value)} frames")
                for packet in value:
                    for obs in self.pipeline.feed(float(packet.time), LINKTYPE_ETHERNET, frame_bytes(packet)):
                        self.observations.append(obs)
                        actual.append(obs.decision)
        return expected, actual

    def __bool__(self) -> bool:
        """Play what was scripted since the last check, and compare."""
        expected, actual = self.transcript()
        self.script.clear()
        assert actual == expected  # pytest shows the two transcripts side by side
        return True


_PORTS = itertools.count(40000)


def get(target: str = "/games/patch%201.pak", **options) -> list:
    """The client's packets of one GET to the origin (handshake included), each on a new connection."""
    options.setdefault("client_port", next(_PORTS))
    return http_get_packets(CLIENT, ORIGIN, options.pop("host", HOST), target, **options)


@pytest.fixture(scope="module")
def cache_server(tmp_path_factory):
    with CacheServer(DirectoryLookup(tmp_path_factory.mktemp("served"))) as server:
        yield server


@pytest.fixture
def clock():
    return [100.0]


@pytest.fixture
def settings(tmp_path):
    return load_settings(cache_dir=tmp_path, http_ports=[80], mode="redirect")


@pytest.fixture
def redirector(cache_server):
    gate = HealthGate(cache_server.base_url)
    assert gate.check_once()
    return Redirector(HotIndex([READY]), gate, CACHE, RedirectScope(), frozenset({("10.0.0.1", 8642)}),
                      hint_secret=SECRET)


@pytest.fixture
def playbook(settings, redirector, clock):
    return Playbook(Pipeline(settings, redirector=redirector, clock=lambda: clock[0]), clock)


def test_a_ready_key_is_redirected_and_its_sighting_still_counts(playbook):
    assert playbook >> get() << Redirect(READY, LOCATION)
    (obs,) = playbook.observations
    assert counts(obs.decision)
    playbook.pipeline.redirected(obs)  # the live loop reports the 302 it sent
    sighting = obs.sighting()
    assert (sighting.client, sighting.server, sighting.host, sighting.url, sighting.key) == (
        CLIENT, ORIGIN, HOST, READY_URL, READY)
    assert playbook.pipeline.summary()["decisions"] == {"redirect": 1}


def test_a_key_not_ready_is_counted(playbook):
    url = canonical_url("/games/other.pak", HOST, 80)
    assert playbook >> get("/games/other.pak") << Count(cache_key(url, {}))


def test_out_of_scope_requests_are_ignored_with_the_reason(playbook):
    assert (playbook
            >> get(method="HEAD") << Ignore("method")
            >> get("/index.html") << Ignore("extension")
            >> get(headers={"Authorization": "Basic eDp5"}) << Ignore("authorization"))


def test_a_head_split_over_segments_is_decided_when_it_is_complete(playbook):
    packets = get(split_at=[10, 30], handshake=False)
    assert len(packets) == 3
    assert playbook >> packets[:2] >> packets[2:] << Redirect(READY, LOCATION)


def test_pipelined_requests_are_counted_never_redirected(playbook):
    other = cache_key(canonical_url("/b.iso", HOST, 80), {})
    assert playbook >> get(pipelined=["/b.iso"]) << Count(READY) << Count(other)
    assert playbook.pipeline.redirector.skipped == {"pipelined": 1}


def test_the_loop_guard_runs_on_the_given_clock(playbook, redirector):
    # Two redirects of the same bytes to the same client inside the loop window are a bounce...
    assert playbook >> get() << Redirect(READY, LOCATION)
    playbook.pipeline.redirected(playbook.observations[-1])
    assert playbook.at(100.2) >> get() << Redirect(READY, LOCATION)
    playbook.pipeline.redirected(playbook.observations[-1])
    # ...and the third ends redirects for that pair for suppress_for seconds of that clock.
    assert playbook.at(100.4) >> get() << Count(READY)
    assert playbook.at(100 + redirector.suppress_for) >> get() << Count(READY)
    assert playbook.at(101 + redirector.suppress_for) >> get() << Redirect(READY, LOCATION)
    assert redirector.skipped["loop"] == 2


def test_a_redirect_that_could_not_be_sent_counts_as_a_plain_request(playbook, redirector):
    assert playbook >> get() << Redirect(READY, LOCATION)
    playbook.pipeline.redirect_failed(playbook.observations[-1])
    assert playbook.pipeline.summary()["decisions"] == {"count": 1}
    assert redirector.skipped == {"inject_failed": 1} and redirector.redirected == 0


def test_no_redirect_while_the_cache_server_is_down(settings, clock, tmp_path):
    server = CacheServer(DirectoryLookup(tmp_path)).start()
    gate = HealthGate(server.base_url, timeout=0.5)
    assert gate.check_once()
    redirector = Redirector(HotIndex([READY]), gate, CACHE, RedirectScope(), frozenset())
    playbook = Playbook(Pipeline(settings, redirector=redirector, clock=lambda: clock[0]), clock)
    server.stop()
    assert not gate.check_once()
    assert playbook >> get() << Count(READY)
    assert redirector.skipped == {"cache_server_down": 1}


def test_without_a_redirector_nothing_is_redirected(settings, clock):
    assert Playbook(Pipeline(settings), clock) >> get() << Count(READY)


def test_hostile_frames_are_rejected_with_their_reason_and_never_redirected(playbook):
    pipeline = playbook.pipeline
    for case in hostile_cases():
        before = pipeline.rejected[case.link_reason] if case.link_reason else 0
        decisions = [obs.decision for obs in pipeline.feed(0.0, LINKTYPE_ETHERNET, case.frame)]
        assert not any(isinstance(d, Redirect) for d in decisions), case.name
        if case.link_reason is not None:
            assert decisions == [] and pipeline.rejected[case.link_reason] == before + 1, case.name


def test_the_live_loop_queues_what_counts_and_nothing_else(settings, clock):
    from cachetap.capture.live import act

    pipeline, queued = Pipeline(settings, clock=lambda: clock[0]), []
    for packets in (get(), get(method="HEAD"), get("/b.iso")):
        for packet in packets:
            frame = frame_bytes(packet)
            act(pipeline.feed(float(packet.time), LINKTYPE_ETHERNET, frame), frame, pipeline, None, queued.append)
    assert [s.url for s in queued] == [READY_URL, "http://cdn.example.org/b.iso"]
    assert [s.client_port for s in queued] == sorted(s.client_port for s in queued)


UNPRIVILEGED = "PIPELINE_TEST_WITHOUT_CAPABILITIES"  # not CACHETAP_*: settings refuse unknown ones


@pytest.mark.skipif(os.environ.get(UNPRIVILEGED) != "1", reason="only inside the capability-less replay")
def test_this_process_really_has_no_privileges():
    with pytest.raises(PermissionError):
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or os.environ.get(UNPRIVILEGED) == "1",
                    reason="needs root and setpriv to drop every capability (as a plain user the file runs as is)")
def test_the_playbook_needs_no_privileges(tmp_path):
    run = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "pytest", "-q",
         "-p", "no:cacheprovider", "--noconftest", f"--basetemp={tmp_path / 'inner'}", __file__],
        env={**os.environ, UNPRIVILEGED: "1"}, capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parent)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


@pytest.mark.parametrize("destination", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1"])
def test_a_ready_key_sent_to_an_address_cachetap_never_fetches_from_is_not_redirected(playbook, destination):
    """Seen failing on 34b94e0: a forged GET to loopback (or another refused address) for a ready key
    was answered with a 302, so anyone could make cachetap transmit frames for such flows."""
    client = "fd00::5" if ":" in destination else CLIENT
    forged = http_get_packets(client, destination, HOST, "/games/patch%201.pak", client_port=next(_PORTS))
    assert playbook >> forged << Count(READY)
    assert playbook.pipeline.redirector.skipped == {"destination_refused": 1}


def test_a_ready_key_whose_host_names_another_port_is_not_redirected(playbook):
    url = canonical_url("/games/patch%201.pak", f"{HOST}:8080", 80)
    assert playbook >> get(host=f"{HOST}:8080") << Count(cache_key(url, {}))
    redirector = playbook.pipeline.redirector
    redirector.index = HotIndex([cache_key(url, {})])
    assert playbook >> get(host=f"{HOST}:8080") << Count(cache_key(url, {}))
    assert redirector.skipped == {"port_mismatch": 1}


def test_remembered_urls_and_locations_decide_as_the_first_time_and_stay_bounded(settings, redirector, clock,
                                                                               monkeypatch):
    """The pipeline remembers what a target names and the redirector the Location it built (both
    hot-path savings): a repeat decides exactly like the first time, bad targets included, and a
    flood of distinct or long targets never grows either table past its bound."""
    from cachetap.capture import pipeline as pipeline_module
    from cachetap.capture import redirector as redirector_module

    monkeypatch.setattr(pipeline_module, "MAX_REMEMBERED", 8)
    monkeypatch.setattr(redirector_module, "MAX_REMEMBERED", 8)
    playbook = Playbook(Pipeline(settings, redirector=redirector, clock=lambda: clock[0]), clock)
    for _ in range(2):
        assert (playbook >> get() << Redirect(READY, LOCATION)
                >> get("/a/../../x.iso", host="bad host") << Ignore("bad_target_control_char"))
    remembered = playbook.pipeline._remembered_resource
    assert remembered.cache_info().hits == 2
    for target in [f"/games/{n}.pak" for n in range(20)]:
        assert playbook >> get(target) << Count(cache_key(canonical_url(target, HOST, 80), {}))
    assert remembered.cache_info().currsize == 8
    before = remembered.cache_info()
    long_target = "/" + "x" * 600 + ".iso"  # long names are worked out each time, never kept
    for _ in range(2):
        assert playbook >> get(long_target) << Count(cache_key(canonical_url(long_target, HOST, 80), {}))
    assert remembered.cache_info() == before
    assert playbook >> get() << Redirect(READY, LOCATION)  # forgotten and rebuilt: the same answer
    assert len(playbook.pipeline.redirector._locations) <= 8
