"""read_frames against files written by our helpers, by scapy's writers and by tcpdump itself."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest
from scapy.utils import wrpcapng

from cachetap.capture.linklayer import decode_frame
from cachetap.capture.pcapfile import CaptureFileError, read_frames
from cachetap.testing.pcaps import frame_bytes, http_get_packets, write_capture, write_pcapng

PACKETS = http_get_packets("10.0.0.1", "10.0.0.2", "example.com", "/a.iso", response_bytes=5000)
PACKETS6 = http_get_packets("fd00::1", "fd00::2", "example.com", "/b.iso", client_port=40100)


def expected(packets, linktype=1):
    return [(float(p.time), linktype, frame_bytes(p, linktype)) for p in packets]


@pytest.mark.parametrize("linktype", [0, 1, 101, 113, 276])
@pytest.mark.parametrize("big_endian", [False, True])
def test_pcap_both_byte_orders_every_link_type(tmp_path, linktype, big_endian):
    path = write_capture(tmp_path / "c.pcap", PACKETS, linktype, big_endian=big_endian)
    reader = read_frames(path)
    frames = list(reader)
    assert [(lt, f) for _, lt, f in frames] == [(lt, f) for _, lt, f in expected(PACKETS, linktype)]
    assert [ts for ts, _, _ in frames] == pytest.approx([float(p.time) for p in PACKETS], abs=1e-6)
    assert reader.end_reason is None and reader.frames == len(PACKETS)


def test_nanosecond_pcap_keeps_sub_microsecond_time(tmp_path):
    packet = PACKETS[0].copy()
    packet.time = 1_700_000_000.123456789
    for nano, big in [(True, False), (True, True)]:
        path = write_capture(tmp_path / f"n{big}.pcap", [packet], nano=nano, big_endian=big)
        (ts, _, _), = read_frames(path)
        # Read as microseconds, the fraction 123456789 would add 123 seconds.
        assert ts == pytest.approx(1_700_000_000.123456789, abs=1e-6)
        assert abs(ts - 1_700_000_000.123457) < 1e-6


@pytest.mark.parametrize("ts_digits", [6, 9])
@pytest.mark.parametrize("big_endian", [False, True])
def test_pcapng_per_interface_link_type_and_resolution(tmp_path, ts_digits, big_endian):
    items = [(1, PACKETS[0]), (276, PACKETS[1]), (101, PACKETS6[3]), (113, PACKETS[3]), (1, PACKETS[4])]
    path = write_pcapng(tmp_path / "c.pcapng", items, ts_digits=ts_digits, big_endian=big_endian)
    frames = list(read_frames(path))
    assert [(lt, f) for _, lt, f in frames] == [(lt, frame_bytes(p, lt)) for lt, p in items]
    assert [ts for ts, _, _ in frames] == pytest.approx([float(p.time) for _, p in items], abs=1e-6)
    segs = [decode_frame(lt, f, ts) for ts, lt, f in frames]
    assert segs[2].payload.startswith(b"GET /b.iso") and segs[3].payload.startswith(b"GET /a.iso")


def test_pcapng_sections_with_different_byte_orders(tmp_path):
    little = write_pcapng(tmp_path / "l.pcapng", [(276, p) for p in PACKETS[:3]])
    big = write_pcapng(tmp_path / "b.pcapng", PACKETS6, ts_digits=9, big_endian=True)
    both = tmp_path / "both.pcapng"
    both.write_bytes(little.read_bytes() + big.read_bytes())  # concatenated files are one file, two sections
    reader = read_frames(both)
    frames = list(reader)
    assert [(lt, f) for _, lt, f in frames] == \
        [(276, frame_bytes(p, 276)) for p in PACKETS[:3]] + [(1, frame_bytes(p)) for p in PACKETS6]
    assert reader.end_reason is None


def test_pcapng_written_by_scapy(tmp_path):
    path = tmp_path / "scapy.pcapng"
    wrpcapng(str(path), PACKETS)
    assert [(lt, f) for _, lt, f in read_frames(path)] == [(lt, f) for _, lt, f in expected(PACKETS)]
    assert [ts for ts, _, _ in read_frames(path)] == pytest.approx([float(p.time) for p in PACKETS], abs=1e-6)


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_pcap_rewritten_by_tcpdump(tmp_path):
    source = write_capture(tmp_path / "in.pcap", PACKETS + PACKETS6, nano=True)
    out = tmp_path / "out.pcap"
    subprocess.run(["tcpdump", "-r", str(source), "-w", str(out)], check=True, capture_output=True)
    assert [(lt, f) for _, lt, f in read_frames(out)] == [(lt, f) for _, lt, f in expected(PACKETS + PACKETS6)]


def test_gzip_compressed_capture(tmp_path):
    plain = write_capture(tmp_path / "c.pcap", PACKETS)
    packed = tmp_path / "c.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(read_frames(packed)) == list(read_frames(plain))


@pytest.mark.parametrize("cut", [1, 7, 16, 40])
def test_truncated_last_pcap_record_stops_cleanly(tmp_path, cut):
    path = write_capture(tmp_path / "c.pcap", PACKETS)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    reader = read_frames(path)
    frames = list(reader)
    assert len(frames) == len(PACKETS) - 1
    assert reader.end_reason == "truncated_file" and reader.truncated


@pytest.mark.parametrize("cut", [1, 4, 12, 30])
def test_truncated_last_pcapng_block_stops_cleanly(tmp_path, cut):
    path = write_pcapng(tmp_path / "c.pcapng", PACKETS)
    path.write_bytes(path.read_bytes()[:-cut])
    reader = read_frames(path)
    assert len(list(reader)) == len(PACKETS) - 1
    assert reader.end_reason == "truncated_file"


def test_header_only_files_are_empty_not_errors(tmp_path):
    pcap = write_capture(tmp_path / "e.pcap", [])
    pcapng = write_pcapng(tmp_path / "e.pcapng", [])
    for path in (pcap, pcapng):
        reader = read_frames(path)
        assert list(reader) == [] and reader.end_reason is None


def test_corrupt_record_length_ends_reading(tmp_path):
    path = write_capture(tmp_path / "c.pcap", PACKETS[:2])
    data = bytearray(path.read_bytes())
    first_len = len(frame_bytes(PACKETS[0]))
    second = 24 + 16 + first_len
    data[second + 8:second + 12] = (10 << 20).to_bytes(4, "little")  # a 10 MiB record
    path.write_bytes(bytes(data))
    reader = read_frames(path)
    assert len(list(reader)) == 1 and reader.end_reason == "corrupt_file"


def test_pcapng_packet_on_undeclared_interface_is_corrupt(tmp_path):
    path = write_pcapng(tmp_path / "c.pcapng", PACKETS[:1])
    data = bytearray(path.read_bytes())
    epb = 28 + int.from_bytes(data[28 + 4:28 + 8], "little")  # after the section header and the IDB
    assert data[epb:epb + 4] == (6).to_bytes(4, "little")
    data[epb + 8:epb + 12] = (5).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    reader = read_frames(path)
    assert list(reader) == [] and reader.end_reason == "corrupt_file"


@pytest.mark.parametrize("content,reason", [
    (b"", "not_capture"),
    (b"GET / HTTP/1.1\r\n\r\n", "not_capture"),
    (b"\x7fELF\x02\x01\x01" + bytes(60), "not_capture"),
    (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated_header"),
    (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c", "truncated_header"),
    (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x00\x00\x00\x00" + bytes(20), "not_capture"),
    (b"\x0a\x0d\x0d\x0a\x05\x00\x00\x00\x4d\x3c\x2b\x1a" + bytes(20), "corrupt_file"),
    (b"\x1f\x8b\x08\x00garbage-not-gzip", "unreadable"),
])
def test_non_capture_files_raise_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(CaptureFileError) as info:
        read_frames(path)
    assert info.value.reason == reason and str(path) in str(info.value)


def test_gzip_wrapping_garbage_is_not_a_capture(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"hello, this is text"))
    with pytest.raises(CaptureFileError) as info:
        read_frames(path)
    assert info.value.reason == "not_capture"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaptureFileError, match="No such file") as info:
        read_frames(tmp_path / "absent.pcap")
    assert info.value.reason == "unreadable"
    with pytest.raises(CaptureFileError):
        read_frames(tmp_path)
