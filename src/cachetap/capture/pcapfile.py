"""Read frames from pcap and pcapng files (also gzip-compressed): (ts, linktype, frame).

A small reader of our own rather than scapy's RawPcapReader/RawPcapNgReader: those silently end
iteration on a cut-off record (or return the partial frame as if whole) and log warnings per block,
so a caller cannot count a truncated file; they also build a namedtuple per packet on what is the
replay hot path. The formats are simple enough to read with `struct` in a page.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PCAP_MAGIC = {
    b"\xa1\xb2\xc3\xd4": (">", 1e6), b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\x3c\x4d": (">", 1e9), b"\x4d\x3c\xb2\xa1": ("<", 1e9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"
# libpcap refuses records above 256 KiB (its maximum snaplen); anything larger means a corrupt file.
MAX_RECORD = 262_144
MAX_BLOCK = 16 << 20  # pcapng blocks can carry options and metadata, but 16 MiB is already absurd

BLOCK_IDB, BLOCK_PB, BLOCK_SPB, BLOCK_EPB = 1, 2, 3, 6
OPT_END, OPT_TSRESOL, OPT_TSOFFSET = 0, 9, 14

Frame = tuple[float, int, bytes]


class CaptureFileError(Exception):
    """The file is not a readable pcap/pcapng capture; `reason` is a short machine word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_frames(path: str | Path) -> CaptureReader:
    """Open a pcap or pcapng file; iterate the result for (ts, linktype, frame).

    Raises CaptureFileError at once for a file that is neither. A file that ends inside a record
    (a capture cut short) ends the iteration cleanly; `end_reason` then says ``truncated_file``.
    """
    return CaptureReader(path)


class CaptureReader:
    """Iterator over the frames of one capture file. After iteration, `end_reason` is None for a
    clean end, ``truncated_file`` when the last record was cut off, ``corrupt_file`` when a record
    header was impossible (the rest of the file cannot be framed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.end_reason: str | None = None
        self.frames = 0
        try:
            raw = open(self.path, "rb")
        except OSError as exc:
            raise CaptureFileError("unreadable", f"{self.path}: {exc.strerror or exc}") from None
        self._file: BinaryIO = raw
        try:
            magic = raw.read(4)
            if magic[:2] == GZIP_MAGIC:
                raw.seek(0)
                self._file = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
                magic = self._file.read(4)
        except (OSError, EOFError, zlib.error) as exc:
            self.close()
            raise CaptureFileError("unreadable", f"{self.path}: {exc}") from None
        if magic in PCAP_MAGIC:
            self._iter = self._read_pcap(*PCAP_MAGIC[magic])
        elif magic == PCAPNG_SHB:
            self._iter = self._read_pcapng()
        else:
            self.close()
            what = "empty file" if not magic else f"starts with {magic.hex()}"
            raise CaptureFileError("not_capture", f"{self.path}: not a pcap or pcapng file ({what})")
        try:
            self._prime()
        except CaptureFileError:
            self.close()
            raise

    @property
    def truncated(self) -> bool:
        return self.end_reason == "truncated_file"

    def _prime(self) -> None:
        # Run the reader up to its first bare `yield`, so a broken file header fails at open.
        next(self._iter)

    def __iter__(self) -> CaptureReader:
        return self

    def __next__(self) -> Frame:
        try:
            return next(self._iter)
        except StopIteration:
            self.close()
            raise

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _read(self, size: int) -> bytes:
        try:
            return self._file.read(size)
        except (OSError, EOFError, zlib.error):  # a damaged gzip stream
            return b""

    # ---- classic pcap ------------------------------------------------------------------------
    def _read_pcap(self, endian: str, ticks_per_second: float) -> Iterator[Frame]:
        header = self._read(20)
        if len(header) < 20:
            raise CaptureFileError("truncated_header", f"{self.path}: pcap file header cut short")
        linktype = struct.unpack(endian + "I", header[16:20])[0] & 0x0FFFFFFF  # upper bits: FCS info
        record = struct.Struct(endian + "IIII")
        yield  # type: ignore[misc]  # primed: the header is valid
        read = self._read
        while True:
            head = read(16)
            if len(head) < 16:
                if head:
                    self.end_reason = "truncated_file"
                return
            seconds, fraction, caplen, _wirelen = record.unpack(head)
            if caplen > MAX_RECORD:
                self.end_reason = "corrupt_file"
                return
            frame = read(caplen)
            if len(frame) < caplen:
                self.end_reason = "truncated_file"
                return
            self.frames += 1
            yield seconds + fraction / ticks_per_second, linktype, frame

    # ---- pcapng --------------------------------------------------------------------------------
    def _read_pcapng(self) -> Iterator[Frame]:
        endian = self._read_section_header()
        interfaces: list[tuple[int, float, float]] = []  # (linktype, units per second, offset)
        yield  # type: ignore[misc]  # primed: the section header is valid
        read = self._read
        while True:
            head = read(8)
            if len(head) < 8:
                if head:
                    self.end_reason = "truncated_file"
                return
            if head[:4] == PCAPNG_SHB:
                # A new section: its own byte order and its own interfaces.
                block_len_bytes = head[4:8]
                bom = read(4)
                if len(bom) < 4:
                    self.end_reason = "truncated_file"
                    return
                endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">" if bom == b"\x1a\x2b\x3c\x4d" else ""
                if not endian:
                    self.end_reason = "corrupt_file"
                    return
                block_len = struct.unpack(endian + "I", block_len_bytes)[0]
                if not 28 <= block_len <= MAX_BLOCK or block_len % 4:
                    self.end_reason = "corrupt_file"
                    return
                if len(read(block_len - 12)) < block_len - 12:
                    self.end_reason = "truncated_file"
                    return
                interfaces = []
                continue
            block_type, block_len = struct.unpack(endian + "II", head)
            if not 12 <= block_len <= MAX_BLOCK or block_len % 4:
                self.end_reason = "corrupt_file"
                return
            body = read(block_len - 8)
            if len(body) < block_len - 8:
                self.end_reason = "truncated_file"
                return
            body = body[:-4]  # the trailing copy of the block length
            if block_type == BLOCK_IDB:
                interfaces.append(_interface(body, endian))
            elif block_type == BLOCK_EPB or block_type == BLOCK_PB:
                if len(body) < 20:
                    self.end_reason = "corrupt_file"
                    return
                if block_type == BLOCK_EPB:
                    ifid, high, low, caplen, _wirelen = struct.unpack_from(endian + "IIIII", body)
                else:
                    ifid, _drops, high, low, caplen, _wirelen = struct.unpack_from(endian + "HHIIII", body)
                if ifid >= len(interfaces) or 20 + caplen > len(body):
                    self.end_reason = "corrupt_file"
                    return
                linktype, units_per_second, offset = interfaces[ifid]
                self.frames += 1
                yield ((high << 32) | low) / units_per_second + offset, linktype, body[20:20 + caplen]
            elif block_type == BLOCK_SPB:
                if not interfaces or len(body) < 4:
                    self.end_reason = "corrupt_file"
                    return
                wirelen = struct.unpack_from(endian + "I", body)[0]
                self.frames += 1
                yield 0.0, interfaces[0][0], body[4:4 + wirelen]  # simple packets carry no timestamp
            # Other blocks (name resolution, statistics, custom) carry nothing we need.

    def _read_section_header(self) -> str:
        rest = self._read(8)
        if len(rest) < 8:
            raise CaptureFileError("truncated_header", f"{self.path}: pcapng section header cut short")
        bom = rest[4:8]
        if bom == b"\x4d\x3c\x2b\x1a":
            endian = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            endian = ">"
        else:
            raise CaptureFileError("not_capture", f"{self.path}: pcapng byte-order magic is {bom.hex()}")
        block_len = struct.unpack(endian + "I", rest[:4])[0]
        if not 28 <= block_len <= MAX_BLOCK or block_len % 4:
            raise CaptureFileError("corrupt_file", f"{self.path}: pcapng section header length {block_len}")
        if len(self._read(block_len - 12)) < block_len - 12:
            raise CaptureFileError("truncated_header", f"{self.path}: pcapng section header cut short")
        return endian


def _interface(body: bytes, endian: str) -> tuple[int, float, float]:
    """(linktype, timestamp units per second, offset in seconds) of an Interface Description Block."""
    if len(body) < 8:
        return 0xFFFF, 1e6, 0.0  # unusable interface: its frames are rejected as an unknown link type
    linktype = struct.unpack_from(endian + "H", body)[0]
    units_per_second, offset = 1e6, 0.0
    position = 8
    while position + 4 <= len(body):
        code, length = struct.unpack_from(endian + "HH", body, position)
        value = body[position + 4:position + 4 + length]
        if code == OPT_END:
            break
        if code == OPT_TSRESOL and length == 1:
            exponent = value[0] & 0x7F
            units_per_second = 2.0 ** exponent if value[0] & 0x80 else 10.0 ** exponent
        elif code == OPT_TSOFFSET and length == 8:
            offset = float(struct.unpack(endian + "q", value)[0])
        position += 4 + length + (-length % 4)
    return linktype, units_per_second, offset
