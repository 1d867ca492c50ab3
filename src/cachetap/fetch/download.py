"""Download one object with aria2 into the blob store: validate, fetch, verify, publish.

Only a complete, verified file is ever published; on any failure the temp file, aria2's control file
and aria2's result are removed and DownloadError(reason, retryable) is raised.

Name resolution: aria2 resolves the URL's host with the machine's resolver (getaddrinfo; the daemon
runs with --async-dns=false), the same one fetch.resolver and the poisoning guard use. aria2 has no
per-download address pinning (no --resolve; --async-dns-server only picks DNS servers, globally), so
when the job carries "addresses" we pin them ourselves: one URI per address with the address as the
host, plus a `Host:` header with the real name (aria2 then sends ours instead of its own).

Redirects: aria2 follows them and has no option not to (aria2/aria2#302), so a download whose origin
answered our HEAD honestly and aria2's GET with a 302 to an internal address would otherwise fetch
internal bytes under the key. A redirect is a failed download: the daemon logs each redirect it
follows, we watch that log while the download runs and once more before publishing, and any redirect
seen meanwhile stops the download and discards the file ("redirected"). The probe already follows
(and re-checks) redirects for HEAD; a URL that redirects is not downloaded through its old name.

The content digest (BLAKE3, the blob's address) is computed while aria2 downloads, so publishing
need not wait for a second pass over the file (BLAKE3 runs at ~4 GB/s on one core here; SHA-256, the
previous address, at ~290 MB/s, slower than a 16-connection download, which is why the address
changed): aria2 runs without a write cache (--disk-cache=0), so every piece
its bitfield marks complete is already in the file; pieces are taken in order
(--stream-piece-selector=inorder), so the complete prefix grows steadily, and a background thread
hashes it as it grows. After a daemon restart or a re-added download the hash starts over.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aria2p
import httpx
import requests

from cachetap.core.keys import KEY_PATTERN
from cachetap.fetch.aria2 import Aria2Daemon, Aria2Error, Aria2Options
from cachetap.store.blobs import BlobHold, BlobStore, PrefixHasher, ShortFile

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
MAX_DAEMON_RESTARTS = 3
MAX_RPC_FAILURES = 25            # consecutive failed status calls (~5 s) before giving up
HASH_CHUNK = 1 << 20
STATUS_KEYS = ["status", "totalLength", "completedLength", "downloadSpeed", "errorCode",
               "errorMessage", "bitfield", "pieceLength"]

# RFC 3986 characters only: no space, quotes, backslash, CR/LF/NUL or anything non-ASCII.
_URL = re.compile(r"http://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
# aria2 error codes after which trying again later cannot help.
_FINAL_ARIA2_ERRORS = {"3": "not_found", "4": "not_found", "23": "too_many_redirects",
                       "24": "auth_required", "28": "bad_option"}
_ARIA2_ERROR_NAMES = {"2": "timeout", "5": "too_slow", "6": "network", "8": "resume_unsupported",
                      "9": "disk_full", "19": "dns_failed", "22": "http_error", "29": "server_overloaded"}

ProgressCallback = Callable[[int, int, int], None]


class DownloadError(Exception):
    """Why a download failed. Its args are its fields, so a result backend rebuilds it from them
    (Celery re-creates a task's exception as `type(*args)`; with the message as the only arg it gave up
    and showed an UnpickleableExceptionWrapper instead of the reason)."""

    def __init__(self, reason: str, retryable: bool, detail: str = "") -> None:
        super().__init__(reason, retryable, detail)
        self.reason = reason
        self.retryable = retryable
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}{': ' + self.detail if self.detail else ''} (retryable={self.retryable})"


@dataclass(frozen=True, slots=True)
class Downloaded:
    digest: str
    size: int
    path: Path
    etag: str | None
    content_type: str | None
    hold: BlobHold | None = None  # release() once the key's catalog row names the blob


@dataclass(frozen=True, slots=True)
class Job:
    key: str
    url: str
    size: int | None
    etag: str | None
    last_modified: str | None
    content_type: str | None
    addresses: tuple[str, ...]


def validate_job(job: Mapping[str, Any]) -> Job:
    """Check every value a job carries before anything touches disk or aria2."""
    def bad(what: str) -> DownloadError:
        return DownloadError("bad_job", retryable=False, detail=what)

    if not isinstance(job, Mapping):
        raise bad("job is not a mapping")
    key, url = job.get("key"), job.get("url")
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise bad(f"key is not 32 lower-case hex chars: {key!r:.80}")
    if not isinstance(url, str) or len(url) > 8192 or not _URL.fullmatch(url):
        raise bad(f"url is not a plain http:// URL of RFC 3986 characters: {url!r:.120}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"url does not parse: {exc}") from None
    if not parts.hostname or "@" in parts.netloc or (port is not None and not 0 < port < 65536):
        raise bad(f"url needs a host, a valid port and no user info: {url!r:.120}")
    size = job.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise bad(f"size is not a non-negative integer: {size!r:.40}")
    texts = {}
    for name in ("etag", "last_modified", "content_type"):
        value = job.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 1024
                                  or not _HEADER_VALUE.fullmatch(value)):
            raise bad(f"{name} is not a printable header value: {value!r:.80}")
        texts[name] = value or None
    addresses = job.get("addresses") or ()
    if isinstance(addresses, str) or not isinstance(addresses, (list, tuple, set, frozenset)):
        raise bad("addresses is not a list")
    try:
        pinned = tuple(sorted(str(ipaddress.ip_address(a)) for a in addresses))
    except (ValueError, TypeError):
        raise bad(f"addresses holds a non-address: {addresses!r:.120}") from None
    return Job(key, url, size, texts["etag"], texts["last_modified"], texts["content_type"], pinned)


def download(job: Mapping[str, Any], daemon: Aria2Daemon, blobs: BlobStore, options: Aria2Options,
             on_progress: ProgressCallback | None = None) -> Downloaded:
    spec = validate_job(job)
    temp = blobs.new_temp_name(spec.key)
    control = temp.with_name(temp.name + ".aria2")
    run = _Run(spec, daemon, options, temp, control)
    try:
        total = run.wait(on_progress)
        # The hash of the tail and the flush of the data to disk run while we re-HEAD the origin;
        # publishing fsyncs again, which then finds nothing left to write.
        run.hasher.advance(total)
        flushing = _flush_in_background(temp)
        etag, content_type, md5 = _revalidate(spec, total, options)
        try:
            digest = run.hasher.finish(total)
        except (ShortFile, OSError) as exc:
            raise DownloadError("short_file", retryable=True, detail=str(exc)) from None
        finally:
            flushing.join()
        if md5 is not None and _md5_file(temp) != md5:
            raise DownloadError("content_md5_mismatch", retryable=True)
        path, hold = blobs.publish_held(temp, digest)  # released once the catalog names the blob
        run.forget()
        return Downloaded(digest, total, path, etag, content_type, hold)
    except Exception:
        # Anything that went wrong, ours included, must not leave a file that looks usable.
        run.hasher.close()
        run.discard()
        raise
    finally:
        # A BaseException (worker shutdown, KeyboardInterrupt) skips discard() and leaves aria2
        # running: its session and control file let the next attempt for this key continue.
        run.hasher.close()


def _flush_in_background(path: Path) -> threading.Thread:
    """fsync `path` on a thread; errors are left to the fsync of the publish, which raises them."""
    def flush() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    thread = threading.Thread(target=flush, name=f"flush:{path.name}", daemon=True)
    thread.start()
    return thread


def _complete_prefix(bitfield: str, piece_length: int, total: int) -> int:
    """Bytes at the start of the file covered by complete pieces (bitfield is MSB-first hex)."""
    pieces = 0
    for ch in bitfield:
        nibble = int(ch, 16)
        if nibble == 0xF:
            pieces += 4
            continue
        for bit in (8, 4, 2, 1):
            if not nibble & bit:
                break
            pieces += 1
        break
    return min(total, pieces * piece_length)


class _Run:
    """One download's conversation with aria2: add or adopt, poll, survive a daemon restart."""

    def __init__(self, spec: Job, daemon: Aria2Daemon, options: Aria2Options, temp: Path, control: Path):
        self.spec, self.daemon, self.options = spec, daemon, options
        self.temp, self.control = temp, control
        self.gid: str | None = None
        self.hasher = PrefixHasher(temp)
        self.restarts = 0
        self.log_offset = daemon.log_size()

    def _uris_and_options(self) -> tuple[list[str], dict[str, Any]]:
        opts: dict[str, Any] = {"dir": str(self.temp.parent), "out": self.temp.name,
                                **self.options.per_download()}
        if not self.spec.addresses:
            return [self.spec.url], opts
        parts = urlsplit(self.spec.url)
        port = f":{parts.port}" if parts.port else ""
        uris = [urlunsplit(parts._replace(netloc=(f"[{a}]" if ":" in a else a) + port))
                for a in self.spec.addresses]
        opts["header"] = [f"Host: {parts.netloc}"]
        return uris, opts

    def start(self) -> None:
        self.daemon.ensure_running()
        client = self.daemon.client
        self.gid = self._adopt(client)
        if self.gid is not None:
            return
        # Without a control file we cannot know what a leftover temp file holds: start afresh.
        if self.temp.exists() and not self.control.exists():
            self.temp.unlink()
        if self.control.exists() and not self.temp.exists():
            self.control.unlink()
        uris, opts = self._uris_and_options()
        self.gid = client.add_uri(uris, opts)

    def _adopt(self, client: aria2p.Client) -> str | None:
        """A download of this temp file aria2 already has (restored from its session)."""
        keys = ["gid", "status", "files"]
        # One round trip for the three lists (each RPC is a new HTTP connection to aria2c).
        lists = client.multicall2([(client.TELL_ACTIVE, [keys]), (client.TELL_WAITING, [0, 1000, keys]),
                                   (client.TELL_STOPPED, [0, 1000, keys])])
        if not all(isinstance(listed, list) and len(listed) == 1 for listed in lists):
            raise aria2p.ClientException(1, f"aria2 refused to list its downloads: {lists!r:.200}")
        found = [d for listed in lists for d in listed[0]]
        for d in found:
            if any(f.get("path") == str(self.temp) for f in d.get("files", [])):
                if d["status"] in ("active", "waiting", "paused"):
                    if d["status"] == "paused":
                        client.unpause(d["gid"])
                    return d["gid"]
                client.remove_download_result(d["gid"])
        return None

    def wait(self, on_progress: ProgressCallback | None) -> int:
        self.start()
        rpc_failures = 0
        while True:
            try:
                st = self.daemon.client.tell_status(self.gid, STATUS_KEYS)
                rpc_failures = 0
            except (requests.RequestException, Aria2Error):
                rpc_failures += 1
                self._recover(rpc_failures)
                continue
            except aria2p.ClientException:
                # The GID is gone (daemon restarted from an older session): add it again.
                self.hasher.reset()
                self.start()
                continue
            self.refuse_redirects()
            total, done = int(st["totalLength"]), int(st["completedLength"])
            if on_progress is not None:
                on_progress(done, total, int(st["downloadSpeed"]))
            status = st["status"]
            if status == "complete":
                self.refuse_redirects()  # a redirect in the last poll interval
                if done != total:
                    raise DownloadError("incomplete", retryable=True, detail=f"{done} of {total} bytes")
                if self.spec.size is not None and total != self.spec.size:
                    raise DownloadError("size_changed", retryable=False,
                                        detail=f"probe said {self.spec.size}, got {total}")
                return total
            if status in ("error", "removed"):
                raise _aria2_failure(st)
            if st.get("bitfield") and total:
                if self.spec.size is not None and total != self.spec.size:
                    raise DownloadError("size_changed", retryable=False,
                                        detail=f"probe said {self.spec.size}, origin now says {total}")
                self.hasher.advance(_complete_prefix(st["bitfield"], int(st["pieceLength"]), total))
            # Poll sooner near the end; aria2's notification of the end wakes us before that.
            speed = int(st["downloadSpeed"])
            eta = (total - done) / speed if speed and total else POLL_INTERVAL
            self.daemon.wait_for_news(self.gid, min(POLL_INTERVAL, max(0.01, eta)))

    def refuse_redirects(self) -> None:
        """Fail when aria2 followed a redirect since this download began (see the module doc).

        aria2's log names connections, not downloads, so a redirect of another download running on the
        same daemon fails this one too; retryable, so that innocent download is tried again later.
        """
        followed = self.daemon.redirects_since(self.log_offset)
        if followed:
            raise DownloadError("redirected", retryable=True, detail=f"to {followed[0][:200]}")

    def _recover(self, rpc_failures: int) -> None:
        if self.daemon.ensure_running():
            self.restarts += 1
            if self.restarts > MAX_DAEMON_RESTARTS:
                raise DownloadError("aria2_crashing", retryable=True, detail=f"{self.restarts} restarts")
            self.hasher.reset()  # the file may have been rewritten from an older control file
            self.start()
            return
        if rpc_failures >= MAX_RPC_FAILURES:
            raise DownloadError("aria2_unreachable", retryable=True)
        time.sleep(POLL_INTERVAL)

    def forget(self) -> None:
        if self.gid is not None:
            self.daemon.forget_news(self.gid)
            try:
                self.daemon.client.remove_download_result(self.gid)
            except (requests.RequestException, aria2p.ClientException, Aria2Error):
                pass  # a stale result only costs memory in aria2; the file is published

    def discard(self) -> None:
        """Stop aria2's download, drop its result and delete every partial file of this key."""
        if self.gid is not None:
            self.daemon.forget_news(self.gid)
            try:
                client = self.daemon.client
                try:
                    client.force_remove(self.gid)
                except aria2p.ClientException:
                    pass  # not active any more
                for _ in range(50):  # removal is asynchronous; wait until aria2 lets go of the file
                    if client.tell_status(self.gid, ["status"])["status"] in ("removed", "error", "complete"):
                        break
                    time.sleep(0.05)
                client.remove_download_result(self.gid)
            except (requests.RequestException, aria2p.ClientException, Aria2Error):
                pass
        self.temp.unlink(missing_ok=True)
        self.control.unlink(missing_ok=True)


def _aria2_failure(st: Mapping[str, str]) -> DownloadError:
    code = st.get("errorCode", "1")
    message = st.get("errorMessage", "") or st.get("status", "")
    if code in _FINAL_ARIA2_ERRORS:
        return DownloadError(_FINAL_ARIA2_ERRORS[code], retryable=False, detail=message)
    return DownloadError(_ARIA2_ERROR_NAMES.get(code, f"aria2_error_{code}"), retryable=True, detail=message)


def _revalidate(spec: Job, total: int, options: Aria2Options) -> tuple[str | None, str | None, bytes | None]:
    """Re-HEAD the origin after the download: the object must be the one we fetched.

    Returns (etag, content_type, content_md5 bytes or None).
    """
    headers = {"User-Agent": "cachetap"}
    if spec.etag:
        headers["If-None-Match"] = spec.etag
    elif spec.last_modified:
        headers["If-Modified-Since"] = spec.last_modified
    url = spec.url
    if spec.addresses:
        parts = urlsplit(url)
        addr = spec.addresses[0]
        port = f":{parts.port}" if parts.port else ""
        url = urlunsplit(parts._replace(netloc=(f"[{addr}]" if ":" in addr else addr) + port))
        headers["Host"] = parts.netloc
    try:
        # verify=False: plain http only, and it spares loading a CA bundle on every download.
        with httpx.Client(trust_env=False, verify=False, timeout=options.timeout,
                          follow_redirects=False) as client:
            r = client.head(url, headers=headers)
    except httpx.HTTPError as exc:
        raise DownloadError("revalidate_failed", retryable=True, detail=str(exc)) from None
    etag = r.headers.get("ETag") or spec.etag
    if r.status_code == 200:
        if spec.etag and r.headers.get("ETag") != spec.etag:
            raise DownloadError("etag_changed", retryable=False,
                                detail=f"{spec.etag} -> {r.headers.get('ETag')}")
        if not spec.etag and spec.last_modified and r.headers.get("Last-Modified") != spec.last_modified:
            raise DownloadError("last_modified_changed", retryable=False)
        length = r.headers.get("Content-Length")
        if length is not None and length != str(total):
            raise DownloadError("size_changed", retryable=False, detail=f"origin now says {length}")
        # The type stored and served is the one the probe saw and the rules accepted (content_types),
        # never another one the origin names after the download.
        new_type = r.headers.get("Content-Type")
        if new_type and spec.content_type and _media_type(new_type) != _media_type(spec.content_type):
            raise DownloadError("content_type_changed", retryable=False,
                                detail=f"{spec.content_type} -> {new_type}"[:200])
    elif r.status_code != 304:
        raise DownloadError("revalidate_failed", retryable=True, detail=f"HEAD answered {r.status_code}")
    md5 = None
    if "Content-MD5" in r.headers:
        try:
            md5 = base64.b64decode(r.headers["Content-MD5"], validate=True)
        except ValueError:
            md5 = b"<invalid>"  # an unparseable digest can never match, so the file is not published
    return etag, spec.content_type, md5


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _md5_file(path: Path) -> bytes:
    # Content-MD5 is rare (deprecated since RFC 7231), so it costs a second read only when present.
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.digest()
