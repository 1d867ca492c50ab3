"""Access-log lines to requests: Squid's native format and nginx's combined format (lancache too).

Squid native (`logformat squid`, the default `access_log` format):
    time elapsed client code/status bytes method URL user hierarchy/peer type
    1700000000.123    456 10.0.0.5 TCP_MISS/200 104857600 GET http://host/file - HIER_DIRECT/1.2.3.4 -

nginx: the combined format, optionally followed by more quoted fields, the last of which is taken as
the Host when the request line has no absolute URL. What cachetap expects:
    log_format cachetap '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                        '"$http_referer" "$http_user_agent" "$host"';
lancache's `cachelog` format ('[$cacheidentifier] $remote_addr / $remote_user [$time_local] ...
"$upstream_cache_status" "$host" "$http_range"') is read as well: a leading "[identifier]" is skipped
and its Host is the second-to-last quoted field. Plain combined lines without a Host field are keyed
by path alone (right for a log of one site).

Only GET requests answered 200 or 206 count; a line that is not one of these formats is counted as
malformed. Parsing is hand-written string slicing: a million lines must take seconds.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass

MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                      "Nov", "Dec"), start=1)}


@dataclass(frozen=True, slots=True)
class LogRequest:
    ts: float
    client: str
    method: str
    target: str          # absolute URL or a path
    host: str | None     # None when the line names none
    status: int
    sent: int            # body bytes delivered


def parse_squid(line: str) -> LogRequest | str:
    """One Squid native line, or a short reason why not."""
    parts = line.split()
    if len(parts) < 7:
        return "malformed"
    try:
        ts = float(parts[0])
        status = int(parts[3].rpartition("/")[2])
        sent = int(parts[4])
    except ValueError:
        return "malformed"
    if sent < 0:
        return "malformed"
    return LogRequest(ts, parts[2], parts[5], parts[6], None, status, sent)


def parse_combined(line: str) -> LogRequest | str:
    """One nginx combined (or lancache cachelog) line, or a short reason why not."""
    text = line.rstrip("\n")
    lancache = text.startswith("[")
    if lancache:
        text = text[text.find("]") + 1:].lstrip()
    client = text.split(" ", 1)[0]
    open_ts, close_ts = text.find("["), text.find("]")
    if not client or open_ts < 0 or close_ts < open_ts:
        return "malformed"
    ts = _clf_time(text[open_ts + 1:close_ts])
    quoted = text[close_ts + 1:].split('"')
    # quoted: ['', request, ' status bytes ', referer, ' ', agent, ' ', extra1, ...]
    if ts is None or len(quoted) < 3:
        return "malformed"
    request = quoted[1].split(" ")
    numbers = quoted[2].split()
    if len(request) < 2 or len(numbers) < 2:
        return "malformed"
    try:
        status, sent = int(numbers[0]), int(numbers[1]) if numbers[1] != "-" else 0
    except ValueError:
        return "malformed"
    fields = quoted[7::2]   # quoted fields after the user agent
    host = None
    if fields:
        host = fields[-2] if lancache and len(fields) >= 2 else fields[-1]
        host = host if host not in ("", "-") else None
    return LogRequest(ts, client, request[0], request[1], host, status, sent)


def _clf_time(text: str) -> float | None:
    """`10/Oct/2000:13:55:36 -0700` as epoch seconds."""
    try:
        day, month, year = int(text[0:2]), MONTHS[text[3:6]], int(text[7:11])
        hour, minute, second = int(text[12:14]), int(text[15:17]), int(text[18:20])
        zone = text[21:26]
        offset = (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60) * (-1 if zone[0] == "-" else 1)
    except (ValueError, KeyError, IndexError):
        return None
    try:
        return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    except (OverflowError, ValueError):
        return None


def sniff_format(line: str) -> str | None:
    """'squid', 'combined' or None for the first line of a log."""
    if isinstance(parse_squid(line), LogRequest):
        return "squid"
    if isinstance(parse_combined(line), LogRequest):
        return "combined"
    return None


