"""Objects follow their key's owner node, on demand: when a ready object is requested and another
cache node owns its key now, it is re-homed.

  * Its holder is gone (not heard from within the liveness window): the entry goes back to `queued`
    and the owner downloads it again from the origin; meanwhile capture nodes fail open for it (the
    holder's health gate is closed), so clients lose nothing but the cache hit.
  * Its holder is alive (a node joined and this key is in its share): the owner copies the object
    from the holder's cache server (peer fill, `move`), verifies it is the same content, and takes
    over as holder; the holder serves it until then and the origin is not asked again.

On demand rather than as a sweep: only requested objects move, so a joining node does not pull its
whole share at once, and a node that is back within the liveness window keeps what it holds.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from celery import shared_task

from cachetap.core.lifecycle import EntryState
from cachetap.core.placement import owner
from cachetap.core.urls import object_url
from cachetap.fetch.aria2 import Aria2Error
from cachetap.fetch.download import DownloadError, download
from cachetap.store.holders import begin_move, finish_move, held_ready_among, rehome
from cachetap.store.nodes import CACHE_ROLE, liveness_window
from cachetap.tasks.download import worker_daemon
from cachetap.tasks.index_events import publish_index_event
from cachetap.tasks.placing import live_cache_members
from cachetap.wire import DOWNLOAD_MOVE, INDEX_READY, DownloadJob, MoveJob, send_download

log = logging.getLogger(__name__)


def rehome_requested(app: Any, keys: list[str], now: float, tally: Counter[str]) -> None:
    """Re-home the requested ready objects whose holder is not their key's owner any more."""
    members = live_cache_members(app, now)
    if not members or not keys:
        return
    live = {m.name for m in members}
    catalog = app.catalog
    for entry in held_ready_among(catalog, keys):
        want = owner(entry.key, members)
        if want is None or entry.node == want:
            continue
        token = str(uuid.uuid4())
        if entry.node in live:
            if begin_move(catalog, entry.key, entry.node, token, now, app.settings.claim_timeout):
                send_download(app, MoveJob(entry.key, token, entry.node), want)
                tally["moving"] += 1
                log.info("%s moves from node %s to its owner %s", entry.key, entry.node, want)
        elif rehome(catalog, entry.key, entry.node, token, now):
            send_download(app, DownloadJob.from_entry(entry, token), want)
            tally["rehomed"] += 1
            log.warning("%s was held by node %s, which is gone: %s downloads it again", entry.key, entry.node, want)


def _addresses(host: str) -> list[str]:
    """The holder's addresses: its URL came from the node registry, which the operator's nodes
    write, so it is resolved as the operator's own configuration is (no fetch guard for the wire)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


@shared_task(bind=True, name=DOWNLOAD_MOVE)
def move(self: Any, message: dict) -> dict[str, Any]:
    """Copy one ready object from its live holder's cache server to this node (peer fill)."""
    app, settings = self.app, self.app.settings
    catalog = app.catalog
    job = MoveJob.from_message(message)
    if job is None:
        log.error("move job without a valid key, claim and holder, dropped: %.200r", message)
        return {"outcome": "bad_job"}
    entry = catalog.get(job.key)
    if (entry is None or entry.state != EntryState.READY or entry.claim_token != job.claim
            or entry.node != job.holder or not entry.blob):
        return {"key": job.key, "outcome": "obsolete"}
    now = time.time()
    window = liveness_window(settings.node_heartbeat_interval)
    peer = next((n for n in catalog.nodes.live(now, window, role=CACHE_ROLE) if n.name == job.holder), None)
    if peer is None or not peer.public_url:
        catalog.end_revalidation(job.key, job.claim, f"move: node {job.holder} is gone")
        return {"key": job.key, "outcome": "holder_gone"}
    url = object_url(peer.public_url, job.key, entry.filename)
    try:
        disk, blobs = app.disks.place(job.key, entry.stored_size)  # its disk here, by hash
        daemon = worker_daemon(settings)
        copied = download({"key": job.key, "url": url, "size": entry.stored_size,
                           "addresses": _addresses(urlsplit(url).hostname or "")},
                          daemon, blobs, daemon.options)
    except (DownloadError, Aria2Error, OSError) as exc:
        catalog.end_revalidation(job.key, job.claim, f"move from {job.holder} failed: {exc}")
        log.warning("copying %s from node %s failed: %s; it stays there", job.key, job.holder, exc)
        return {"key": job.key, "outcome": "copy_failed"}
    try:
        if copied.digest != entry.blob or not finish_move(catalog, job.key, job.claim, copied.digest,
                                                          settings.effective_node_name, disk):
            catalog.end_revalidation(job.key, job.claim, None)
            log.warning("copy of %s from node %s not taken (content %s, catalog %s)", job.key, job.holder,
                        copied.digest, entry.blob)
            return {"key": job.key, "outcome": "not_taken"}
    finally:
        if copied.hold is not None:
            copied.hold.release()
    publish_index_event(app, INDEX_READY, [job.key], expires=[entry.expires_at], node=settings.effective_node_name)
    log.info("moved %s from node %s (%d bytes)", job.key, job.holder, copied.size)
    return {"key": job.key, "outcome": "moved", "digest": copied.digest, "from": job.holder}
