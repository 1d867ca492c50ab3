"""Response heads as bytes. Every value put here comes from a checked source (see core/semantics.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from http import HTTPStatus

from cachetap import __version__ as _version
from cachetap.core.semantics import content_disposition, format_http_date, safe_content_type, valid_etag
from cachetap.web.lookup import ServedObject

SERVER = f"cachetap/{_version}"
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _DateCache:
    """The Date header changes once a second; formatting it per response is wasted work."""

    second = -1
    value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, format_http_date(second)
        return self.value


_date = _DateCache()


def head(status: int, fields: list[tuple[str, str]], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
             f"Date: {_date.now()}", f"Server: {SERVER}"]
    lines.extend(f"{name}: {value}" for name, value in fields)
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def simple(status: int, body: bytes, keep_alive: bool, extra: list[tuple[str, str]] | None = None,
           content_type: str = "text/plain; charset=utf-8", with_body: bool = True) -> bytes:
    fields = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    fields.extend(extra or [])
    return head(status, fields, keep_alive) + (body if with_body else b"")


@dataclass(frozen=True, slots=True)
class ObjectFields:
    """What every answer about one object shares, computed once per object (see CacheServer)."""

    validators: list[tuple[str, str]]      # 304s: Accept-Ranges, ETag, Last-Modified
    representation: list[tuple[str, str]]  # 200/206: type, disposition, nosniff, then the validators
    etag: str | None
    modified: float

    @classmethod
    def of(cls, obj: ServedObject) -> ObjectFields:
        validators = object_fields(obj)
        etag = next((v for n, v in validators if n == "ETag"), None)
        return cls(validators, [*representation_fields(obj), *validators], etag, modified_time(obj))


def object_fields(obj: ServedObject) -> list[tuple[str, str]]:
    """Validators and metadata shared by 200, 206 and 304 answers."""
    fields = [("Accept-Ranges", "bytes")]
    if valid_etag(obj.etag, obs_text=False):
        fields.append(("ETag", obj.etag))
    fields.append(("Last-Modified", format_http_date(modified_time(obj))))
    return fields


def modified_time(obj: ServedObject) -> float:
    return obj.last_modified if obj.last_modified is not None else obj.mtime


def representation_fields(obj: ServedObject) -> list[tuple[str, str]]:
    # nosniff: browsers take the type as given, so an object can never be run as a page or script.
    return [("Content-Type", safe_content_type(obj.content_type)),
            ("Content-Disposition", content_disposition(obj.filename)),
            ("X-Content-Type-Options", "nosniff")]
