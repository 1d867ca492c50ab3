"""HeadAssembler with the real head parser, fed segments decoded from generated conversations."""

from __future__ import annotations

import pytest

from cachetap.capture.linklayer import decode_frame
from cachetap.capture.reassembly import HeadAssembler
from cachetap.core.types import Segment
from cachetap.testing.pcaps import hostile_cases, http_get_packets


def request_segments(packets, server_port: int = 80) -> list[Segment]:
    """Client-to-server segments with data, as the pipeline hands them to the assembler."""
    segs = [decode_frame(1, bytes(p), float(p.time)) for p in packets]
    return [s for s in segs if isinstance(s, Segment) and s.dport == server_port and s.payload]


def feed_all(assembler: HeadAssembler, segments) -> tuple[list, list[str]]:
    requests, rejects = [], []
    for seg in segments:
        result = assembler.feed(seg)
        requests += result.requests
        rejects += result.rejects
    return requests, rejects


def targets(requests) -> list[str]:
    return [r.target for r in requests]


def test_single_segment_request_passes_straight_through():
    assembler = HeadAssembler(max_flows=16)
    segs = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "example.com", "/a.iso",
                                             headers={"Range": "bytes=0-99", "User-Agent": "curl/8"}))
    (head,), rejects = feed_all(assembler, segs)
    assert rejects == [] and len(assembler) == 0
    assert (head.method, head.target, head.host, head.range, head.user_agent) == \
        ("GET", "/a.iso", "example.com", "bytes=0-99", "curl/8")


@pytest.mark.parametrize("split_at", [1, 4, 5, 20, [3, 9, 30, 41], list(range(1, 60))])
def test_split_heads_are_joined(split_at):
    assembler = HeadAssembler(max_flows=16)
    segs = request_segments(http_get_packets("fd00::1", "fd00::2", "example.com", "/split.iso", split_at=split_at))
    assert len(segs) > 1
    requests, rejects = feed_all(assembler, segs)
    assert targets(requests) == ["/split.iso"] and rejects == [] and len(assembler) == 0


def test_pipelined_heads_in_one_segment_all_come_out():
    assembler = HeadAssembler(max_flows=16)
    segs = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/1.iso", pipelined=["/2.iso", "/3.iso"]))
    assert len(segs) == 1
    requests, rejects = feed_all(assembler, segs)
    assert targets(requests) == ["/1.iso", "/2.iso", "/3.iso"] and rejects == []


def test_pipelined_heads_split_mid_head():
    assembler = HeadAssembler(max_flows=16)
    packets = http_get_packets("10.0.0.1", "10.0.0.2", "h", "/1.iso", pipelined=["/2.iso", "/3.iso"], split_at=[20, 50])
    results = [assembler.feed(s) for s in request_segments(packets)]
    # Complete heads come out as soon as their segment arrives; the rest waits.
    assert [targets(r.requests) for r in results] == [[], ["/1.iso"], ["/2.iso", "/3.iso"]]
    assert len(assembler) == 0


def test_duplicate_and_overlapping_retransmissions_are_ignored():
    assembler = HeadAssembler(max_flows=16)
    a, b, c = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/r.iso", split_at=[10, 25]))
    overlap = Segment(**{**_fields(b), "seq": b.seq - 4, "payload": a.payload[-4:] + b.payload})
    requests, rejects = feed_all(assembler, [a, a, overlap, b, c, c])
    assert targets(requests) == ["/r.iso"]
    assert rejects == ["retransmission"]  # the late copy of the last segment, after the head was complete


def test_retransmitted_complete_request_is_not_reported_twice():
    assembler = HeadAssembler(max_flows=16)
    (seg,) = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/once.iso"))
    requests, rejects = feed_all(assembler, [seg, seg])
    assert targets(requests) == ["/once.iso"] and rejects == ["retransmission"]


def test_next_request_on_a_keep_alive_connection_is_not_a_retransmission():
    assembler = HeadAssembler(max_flows=16)
    (first,) = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/1.iso"))
    second = Segment(**{**_fields(first), "seq": first.seq + len(first.payload),
                        "payload": first.payload.replace(b"/1.iso", b"/2.iso"), "ts": first.ts + 1})
    much_later = Segment(**{**_fields(first), "ts": first.ts + 100})  # same tuple, old seq, long after: new connection
    requests, rejects = feed_all(assembler, [first, second, much_later])
    assert targets(requests) == ["/1.iso", "/2.iso", "/1.iso"] and rejects == []


def test_sequence_numbers_wrapping_around_zero():
    assembler = HeadAssembler(max_flows=16)
    packets = http_get_packets("10.0.0.1", "10.0.0.2", "h", "/wrap.iso", split_at=[12], client_isn=2**32 - 6)
    segs = request_segments(packets)
    assert segs[0].seq > segs[1].seq  # the second segment's sequence number wrapped
    requests, rejects = feed_all(assembler, segs)
    assert targets(requests) == ["/wrap.iso"] and rejects == []


def test_a_gap_rejects_the_held_head_and_parses_the_new_segment():
    assembler = HeadAssembler(max_flows=16)
    first, _, _ = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/lost.iso", split_at=[10, 25]))
    # Live, the continuation is filtered out and the next thing seen is the next request's start.
    next_request = Segment(**{**_fields(first), "seq": first.seq + 500,
                              "payload": b"GET /next.iso HTTP/1.1\r\nHost: h\r\n\r\n"})
    requests, rejects = feed_all(assembler, [first, next_request])
    assert targets(requests) == ["/next.iso"] and rejects == ["gap"] and len(assembler) == 0


def test_out_of_order_continuation_is_a_gap():
    assembler = HeadAssembler(max_flows=16)
    a, b, c = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/ooo.iso", split_at=[10, 25]))
    requests, rejects = feed_all(assembler, [a, c, b])
    assert requests == [] and rejects[0] == "gap"


def test_flows_are_kept_apart():
    assembler = HeadAssembler(max_flows=16)
    one = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/one.iso", split_at=[7], client_port=40001))
    two = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/two.iso", split_at=[7], client_port=40002))
    requests, rejects = feed_all(assembler, [one[0], two[0], two[1], one[1]])
    assert targets(requests) == ["/two.iso", "/one.iso"] and rejects == []


def test_lru_eviction_counts_incomplete_and_keeps_the_newest():
    assembler = HeadAssembler(max_flows=3)
    flows = [request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", f"/{i}.iso", split_at=[8],
                                               client_port=41000 + i)) for i in range(5)]
    evictions = []
    for first, _ in flows:
        evictions += assembler.feed(first).rejects
    assert evictions == ["incomplete", "incomplete"] and len(assembler) == 3
    requests, rejects = feed_all(assembler, [second for _, second in flows])
    # Flows 0 and 1 were evicted: their continuations start with no method and are rejected.
    assert targets(requests) == ["/2.iso", "/3.iso", "/4.iso"]
    assert len(rejects) == 2 and "incomplete" not in rejects


def test_expire_counts_idle_heads_incomplete():
    assembler = HeadAssembler(max_flows=16, idle_timeout=5.0)
    slow = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/slow.iso", split_at=[8], start=100.0,
                                             client_port=40001))
    fresh = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/fresh.iso", split_at=[8], start=104.0,
                                              client_port=40002))
    assembler.feed(slow[0])
    assembler.feed(fresh[0])
    assert assembler.expire(105.0) == []
    assert assembler.expire(106.0) == ["incomplete"] and len(assembler) == 1
    assert targets(assembler.feed(fresh[1]).requests) == ["/fresh.iso"]
    assert assembler.expire(float("inf")) == []


def test_end_of_file_counts_everything_still_held():
    assembler = HeadAssembler(max_flows=16)
    for port in range(40000, 40004):
        packets = http_get_packets("10.0.0.1", "10.0.0.2", "h", "/x.iso", split_at=[5], client_port=port)
        first, _ = request_segments(packets)
        assembler.feed(first)
    assert assembler.expire(float("inf")) == ["incomplete"] * 4 and len(assembler) == 0


def test_fin_or_rst_inside_a_head_counts_incomplete_and_bare_acks_do_not():
    assembler = HeadAssembler(max_flows=16)
    first, second = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/f.iso", split_at=[8]))
    ack = Segment(**{**_fields(second), "payload": b"", "flags": 0x10})
    fin = Segment(**{**_fields(second), "payload": b"", "flags": 0x11})
    assert assembler.feed(first).rejects == [] and assembler.feed(ack).rejects == [] and len(assembler) == 1
    assert assembler.feed(fin).rejects == ["incomplete"] and len(assembler) == 0


def test_parser_errors_become_rejects():
    assembler = HeadAssembler(max_flows=16)
    base = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/x.iso"))[0]
    for payload in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\r\nHo\x00st: x\r\n\r\n",
                    b"GET /a b c HTTP/1.1\r\n\r\n", b"\x00\x01\x02\x03" * 50):
        result = assembler.feed(Segment(**{**_fields(base), "payload": payload, "sport": base.sport + len(payload)}))
        assert result.requests == [] and len(result.rejects) == 1 and result.rejects[0], payload
    assert len(assembler) == 0


def test_a_split_head_that_turns_bad_is_rejected():
    assembler = HeadAssembler(max_flows=16)
    first, second = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/f.iso", split_at=[20]))
    bad = Segment(**{**_fields(second), "payload": b"\x00\xff garbage \x00\r\n\r\n"})
    assert assembler.feed(first).rejects == []
    result = assembler.feed(bad)
    assert result.requests == [] and len(result.rejects) == 1 and len(assembler) == 0


def test_head_larger_than_the_limit_is_rejected_not_held():
    assembler = HeadAssembler(max_flows=16, max_head=1000)
    segs = request_segments(http_get_packets("10.0.0.1", "10.0.0.2", "h", "/" + "a" * 3000 + ".iso",
                                             split_at=[500, 1000, 1500, 2000]))
    requests, rejects = feed_all(assembler, segs)
    assert requests == [] and rejects[0] == "head_too_large" and len(assembler) == 0


def test_sixty_kilobyte_target_split_over_segments_is_reassembled():
    assembler = HeadAssembler(max_flows=16)
    cases = [c for c in hostile_cases() if c.name.startswith("long_target_part_")]
    segs = [decode_frame(1, c.frame, 0.0) for c in cases]
    assert len(segs) > 40
    requests, rejects = feed_all(assembler, segs)
    assert rejects == [] and len(requests) == 1 and len(requests[0].target) > 60_000


def test_bad_arguments():
    for kwargs in ({"max_flows": 0}, {"max_flows": 1, "max_head": 0}, {"max_flows": 1, "idle_timeout": 0}):
        with pytest.raises(ValueError):
            HeadAssembler(**kwargs)


def _fields(seg: Segment) -> dict:
    return {name: getattr(seg, name) for name in Segment.__dataclass_fields__}


def test_held_heads_stay_within_a_byte_budget():
    """Seen failing on 34b94e0 (no budget): 10,000 flows x 64 KiB of unfinished heads were all held."""
    assembler = HeadAssembler(max_flows=10_000, max_bytes=1 << 20)
    head = b"GET /a.iso HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60_000  # never finished
    rejects = []
    for n in range(200):
        seg = Segment(1.0, "10.0.0.5", 10_000 + n, "93.184.216.34", 80, 1, 1, 0x18, head)
        rejects += assembler.feed(seg).rejects
    assert assembler.held_bytes <= 1 << 20
    assert len(assembler) == (1 << 20) // len(head) and rejects.count("incomplete") == 200 - len(assembler)
