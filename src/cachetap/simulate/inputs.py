"""Files to a stream of (time, cache key, object size, bytes sent): logs and captures, gzip or not.

Keys are made exactly as the capture makes them (`core.keys.canonical_url` + `cache_key` with the
`strip_query_params` settings), so a simulated key is the key production would use.

Object sizes: a 200 line's bytes are the object's size; a 206 line delivers part of an object, whose
size is taken as the largest delivery of it seen so far. Captures go through the capture pipeline
(`capture.pipeline.Pipeline`, the code `cachetap replay` runs); a request's size comes from the
response head on the same connection (Content-Length of a 200, the total of a 206's Content-Range).
A request whose response is not in the capture is skipped and counted as `no_response`.
"""

from __future__ import annotations

import gzip
import io
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path

from cachetap.capture.linklayer import decode_frame
from cachetap.capture.pcapfile import PCAP_MAGIC, PCAPNG_SHB, CaptureFileError, read_frames
from cachetap.capture.pipeline import Pipeline, counts
from cachetap.core.keys import BadTarget, cache_key, canonical_url
from cachetap.core.types import Sighting
from cachetap.settings import Settings
from cachetap.simulate.logs import LogRequest, parse_combined, parse_squid, sniff_format

Request = tuple[float, str, int, int]     # time, key, object size, bytes sent
Progress = Callable[[int], None]          # told the bytes read so far of the current file
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,19})[ \t]*\r\n", re.I)
KEY_MEMO = 1 << 20                        # distinct URLs whose keys are remembered
_CONTENT_RANGE = re.compile(rb"\r\ncontent-range:[ \t]*bytes [0-9]+-[0-9]+/(\d{1,19})[ \t]*\r\n", re.I)


class InputError(Exception):
    """A file that cannot be read at all (its one-line reason names the file)."""


def kind_of(path: Path) -> str:
    """'capture', 'squid' or 'combined', from the file's first bytes (gzip looked through)."""
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
            start = stream.read(4096)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: unreadable: {exc}") from None
    if start[:4] in PCAP_MAGIC or start[:4] == PCAPNG_SHB:
        return "capture"
    for line in start.decode("utf-8", "replace").splitlines():
        if line.strip():
            kind = sniff_format(line)
            if kind is None:
                raise InputError(f"{path}: neither a Squid access.log, an nginx combined log nor a pcap/pcapng "
                                 f"capture (first line: {line[:80]!r})")
            return kind
    raise InputError(f"{path}: empty")


def read_requests(path: Path, settings: Settings, skipped: Counter[str], progress: Progress | None = None
                  ) -> Iterator[Request]:
    kind = kind_of(path)
    if kind == "capture":
        yield from _capture_requests(path, settings, skipped, progress)
    else:
        yield from _log_requests(path, parse_squid if kind == "squid" else parse_combined, settings, skipped,
                                 progress)


def _log_requests(path: Path, parse: Callable[[str], LogRequest | str], settings: Settings,
                  skipped: Counter[str], progress: Progress | None) -> Iterator[Request]:
    strip, port = settings.strip_query_params, settings.http_ports[0] if settings.http_ports else 80
    sizes: dict[str, int] = {}
    keys: dict[tuple[str, str | None], str | None] = {}   # a log names the same URLs again and again
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = io.TextIOWrapper(gzip.GzipFile(fileobj=raw) if gz else raw, "utf-8", "replace", newline="\n")
        try:
            for n, line in enumerate(stream):
                if progress is not None and n % 20_000 == 0:
                    progress(raw.tell())
                req = parse(line)
                if isinstance(req, str):
                    if line.strip():
                        skipped[req] += 1
                    continue
                if req.method != "GET":
                    skipped["not_get"] += 1
                    continue
                if req.status != 200 and req.status != 206:
                    skipped[f"status_{req.status}"] += 1
                    continue
                found = (req.target, req.host)
                key = keys.get(found, "")
                if key == "":
                    if len(keys) >= KEY_MEMO:
                        keys.clear()
                    key = keys[found] = _key(req.target, req.host, port, strip)
                if key is None:
                    skipped["bad_target"] += 1
                    continue
                size = sizes.get(key, 0)
                if req.sent > size:
                    size = sizes[key] = req.sent
                yield req.ts, key, size, req.sent
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            skipped["truncated_file"] += 1
            if not isinstance(exc, EOFError):
                raise InputError(f"{path}: read failed: {exc}") from None


def _key(target: str, host: str | None, port: int, strip: dict[str, list[str]]) -> str | None:
    try:
        if target.startswith("/") and host is None:
            return cache_key(canonical_url(target, "localhost", port), strip)
        return cache_key(canonical_url(target, host, port), strip)
    except BadTarget:
        return None


def _capture_requests(path: Path, settings: Settings, skipped: Counter[str], progress: Progress | None
                      ) -> Iterator[Request]:
    ports = frozenset(settings.http_ports)
    waiting: dict[tuple, deque[Sighting]] = {}   # connection -> requests awaiting their response head
    pipeline = Pipeline(settings)
    try:
        with read_frames(path) as frames:
            for n, (ts, linktype, frame) in enumerate(frames):
                if progress is not None and n % 50_000 == 0:
                    progress(n)
                for obs in pipeline.feed(ts, linktype, frame):
                    if counts(obs.decision):
                        s = obs.sighting()
                        waiting.setdefault((s.client, s.client_port, s.server, s.server_port), deque()).append(s)
                seg = decode_frame(linktype, frame, ts)
                if isinstance(seg, str) or seg.sport not in ports or not seg.payload.startswith(b"HTTP/1."):
                    continue
                queue = waiting.get((seg.dst, seg.dport, seg.src, seg.sport))
                if not queue:
                    continue
                sighting = queue.popleft()
                found = _response_size(seg.payload)
                if found is None:
                    skipped["no_size"] += 1
                elif sighting.method != "GET":
                    skipped["not_get"] += 1
                else:
                    yield sighting.ts, sighting.key, found[0], found[1]
            if frames.end_reason:
                skipped[frames.end_reason] += 1
    except CaptureFileError as exc:
        raise InputError(f"{path}: {exc}") from None
    pipeline.finish()
    skipped["no_response"] += sum(len(q) for q in waiting.values())
    for reason, count in pipeline.decisions.items():
        if reason.startswith("ignore"):
            skipped[reason] += count


def _response_size(payload: bytes) -> tuple[int, int] | None:
    """(object size, bytes sent) from a response head: 200 with Content-Length, 206 with Content-Range."""
    end = payload.find(b"\r\n\r\n")
    head = payload[: end + 2] if end >= 0 else payload
    status = head[9:12]
    length = _CONTENT_LENGTH.search(head)
    if status == b"200" and length:
        return int(length.group(1)), int(length.group(1))
    total = _CONTENT_RANGE.search(head)
    if status == b"206" and total:
        return int(total.group(1)), int(length.group(1)) if length else int(total.group(1))
    return None
