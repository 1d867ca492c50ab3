"""One access-log line in Squid's native format, so existing log tools and dashboards read it.

    time.ms elapsed client tag/status bytes method URL user hierarchy/peer content-type [reason]

Tags: TCP_HIT (the cache server sent the object or a range of it), TCP_REFRESH_HIT (the same, for
the first answer after the object went stale and the origin confirmed it unchanged: a 304 to our
conditional request; the request that found it stale was sent to the origin, TCP_MISS "stale"),
TCP_IMS_HIT (a 304 to a conditional request), TCP_MISS (the cache server sent the client back to
the origin; the reason follows as an eleventh field, which parsers of the ten native fields ignore), TCP_REDIRECT (the
capture injected a 302 towards the cache server; the object itself is logged by the server, so hit
ratios count each download once). `_ABORTED` is appended when the client left before the body ended.
"""

from __future__ import annotations

HIT, REFRESH_HIT, IMS_HIT = "TCP_HIT", "TCP_REFRESH_HIT", "TCP_IMS_HIT"
MISS, REDIRECT = "TCP_MISS", "TCP_REDIRECT"


def squid_line(ts: float, elapsed_ms: int, client: str, tag: str, status: int, size: int, method: str,
               url: str, content_type: str | None = None, reason: str | None = None,
               aborted: bool = False) -> str:
    fields = [f"{ts:.3f}", f"{max(0, elapsed_ms):6d}", client or "-",
              f"{tag}{'_ABORTED' if aborted else ''}/{status:03d}", str(max(0, size)), method or "-",
              _field(url), "-", "HIER_NONE/-", _field(content_type or "-")]
    if reason:
        fields.append(_field(reason))
    return " ".join(fields)


def _field(text: str) -> str:
    """Whitespace and control characters would split or break a line: percent-encode them."""
    if text.isprintable() and " " not in text:
        return text or "-"
    return "".join(c if c.isprintable() and c != " " else "".join(f"%{b:02X}" for b in c.encode()) for c in text)
