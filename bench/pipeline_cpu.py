"""CPU time per GET in the capture's decision path, without sockets: frames in, decisions out.

    .venv/bin/python bench/pipeline_cpu.py [--requests 20000] [--repeat 3]

Feeds real Ethernet frames of GETs (cachetap.testing.pcaps) through `Pipeline.feed` with a real
`Redirector` over a `HotIndex`, builds the 302 and RST frames a redirect sends, and builds each
sighting, as the live loop does (the socket calls are what bench/redirect_latency.py measures).
Four rows: counted GETs with a new URL each and with 500 URLs asked again and again, and
redirected GETs likewise. Figures are CPU microseconds per GET (`time.process_time`, best of
--repeat), so other work on the machine moves them little. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from cachetap.capture.hotindex import HotIndex
from cachetap.capture.inject import LinkHeaders, build_redirect_frames
from cachetap.capture.pipeline import Pipeline
from cachetap.capture.redirector import RedirectScope, Redirector
from cachetap.core.keys import cache_key, canonical_url
from cachetap.settings import load_settings
from cachetap.testing.pcaps import LINKTYPE_ETHERNET, frame_bytes, http_get_packets

HOST, ORIGIN, CACHE = "cdn.example.org", "93.184.216.34", "http://10.0.0.1:8642"


class AlwaysHealthy:
    ok = True  # the health gate's verdict; this bench measures the decision, not the checker


def get_frames(count: int, distinct: int | None) -> tuple[list[bytes], list[str]]:
    frames, targets = [], []
    for i in range(count):
        target = f"/games/{i if distinct is None else i % distinct}/patch.pak"
        packets = http_get_packets(f"10.0.{i // 250 % 250}.{i % 250 + 1}", ORIGIN, HOST, target,
                                   client_port=20000 + i % 40000, handshake=False)
        frames.append(frame_bytes(packets[0]))
        targets.append(target)
    return frames, targets


def cpu_per_get(frames: list[bytes], ready: list[str]) -> float:
    settings = load_settings(cache_dir=tempfile.mkdtemp(), http_ports=[80], mode="redirect")
    index = HotIndex([cache_key(canonical_url(t, HOST, 80), {}) for t in ready])
    redirector = Redirector(index, AlwaysHealthy(), CACHE, RedirectScope(), frozenset({("10.0.0.1", 8642)}),
                            hint_secret=b"s" * 32, fetch_guard=lambda address: None)
    pipeline = Pipeline(settings, redirector=redirector)
    started = time.process_time()
    for frame in frames:
        for obs in pipeline.feed(1.0, LINKTYPE_ETHERNET, frame):
            if obs.decision.kind == "redirect":
                build_redirect_frames(obs.segment, LinkHeaders.swapped(frame), obs.decision.location)
                pipeline.redirected(obs, 1.0)
            obs.sighting().to_dict()
    elapsed = time.process_time() - started
    assert sum(pipeline.decisions.values()) == len(frames), pipeline.summary()
    return elapsed / len(frames) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'GETs':<40} {'CPU us per GET':>15}")
    for label, distinct, redirect in (("counted, every URL new", None, False),
                                      ("counted, 500 URLs asked again", 500, False),
                                      ("redirected, every URL new", None, True),
                                      ("redirected, 500 URLs asked again", 500, True)):
        frames, targets = get_frames(args.requests, distinct)
        best = min(cpu_per_get(frames, targets if redirect else []) for _ in range(args.repeat))
        print(f"{label:<40} {best:15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
