"""The messaging contract between capture, the CLI and the task queues: names, routes and message forms.

Both sides import this module and nothing of each other: the capture process sends sighting batches
and listens to index events, the tasks consume those batches and send download jobs and index
events. Everything a message carries comes off the broker, which anyone who can write to it can
fill, so each decoder validates before anything acts on a value.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kombu import Consumer, Exchange, Queue

from cachetap.core.keys import KEY_PATTERN
from cachetap.core.admission import ProbeResult
from cachetap.core.types import Sighting
from cachetap.settings import NODE_NAME

if TYPE_CHECKING:  # the capture process loads no database code
    from cachetap.store.catalog import EntryView

log = logging.getLogger(__name__)

# ---- task names and routing ---------------------------------------------------------------------
ANALYZE_BATCH = "cachetap.analyze.batch"
DOWNLOAD_FETCH = "cachetap.download.fetch"
DOWNLOAD_MOVE = "cachetap.download.move"
DOWNLOAD_DROP = "cachetap.download.drop"
DOWNLOAD_HOUSEKEEPING = "cachetap.download.housekeeping"
CAPTURE_REPLAY = "cachetap.capture.replay"
SCHEDULE_PRUNE_HITS = "cachetap.schedule.prune_hits"
SCHEDULE_RECLAIM = "cachetap.schedule.reclaim"
SCHEDULE_PRUNE_BROKER = "cachetap.schedule.prune_broker"
SCHEDULE_CLEANUP = "cachetap.schedule.cleanup"
SCHEDULE_QUOTA = "cachetap.schedule.quota"
SCHEDULE_RECONCILE = "cachetap.schedule.reconcile"
SCHEDULE_REVALIDATE = "cachetap.schedule.revalidate"
SCHEDULE_STATS = "cachetap.schedule.stats"

QUEUE_NAMES = ("capture", "analyze", "download", "schedule")


def direct_queue(name: str) -> Queue:
    """A queue on its own direct exchange, as Celery makes one it was not told of (`download.<node>`)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


QUEUES = tuple(direct_queue(name) for name in QUEUE_NAMES)

ROUTES: dict[str, dict[str, str]] = {
    CAPTURE_REPLAY: {"queue": "capture"},
    ANALYZE_BATCH: {"queue": "analyze"},
    DOWNLOAD_FETCH: {"queue": "download"},
    DOWNLOAD_MOVE: {"queue": "download"},
    DOWNLOAD_DROP: {"queue": "download"},
    DOWNLOAD_HOUSEKEEPING: {"queue": "download"},
    SCHEDULE_PRUNE_HITS: {"queue": "schedule"},
    SCHEDULE_RECLAIM: {"queue": "schedule"},
    SCHEDULE_PRUNE_BROKER: {"queue": "schedule"},
    SCHEDULE_CLEANUP: {"queue": "schedule"},
    SCHEDULE_QUOTA: {"queue": "schedule"},
    SCHEDULE_RECONCILE: {"queue": "schedule"},
    SCHEDULE_REVALIDATE: {"queue": "schedule"},
    SCHEDULE_STATS: {"queue": "schedule"},
    "celery.backend_cleanup": {"queue": "schedule"},  # added by beat when results expire
}


class TaskSender(Protocol):
    """What sending needs of a Celery app."""

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any: ...


def send(app: TaskSender, task: str, *args: Any) -> Any:
    """Send `task` with `args` to the queue its route names; returns Celery's AsyncResult."""
    return app.send_task(task, args=list(args), queue=ROUTES[task]["queue"])


# ---- per-node download queues ---------------------------------------------------------------------
# A cache node's download worker consumes `download.<node>` besides the shared `download` queue: a
# job goes to the queue of the node that owns its key (core/placement.py), so the object lands on
# that node's disks; with no live cache node known (one box starting up) it goes to `download`,
# which any download worker takes.
DOWNLOAD_QUEUE = ROUTES[DOWNLOAD_FETCH]["queue"]


def download_queue(node: str | None) -> str:
    """The queue of `node`'s download worker (the shared one for None). Raises ValueError for a
    name that is no node name (settings.NODE_NAME)."""
    if node is None:
        return DOWNLOAD_QUEUE
    if not NODE_NAME.fullmatch(node):
        raise ValueError(f"not a node name: {node!r}")
    return f"{DOWNLOAD_QUEUE}.{node}"


def send_download(app: TaskSender, job: DownloadJob | MoveJob | FileDrop, node: str | None) -> Any:
    """Queue `job` (a download, a copy from another node, or a file to drop) for `node`'s download
    worker (None: any)."""
    task = DOWNLOAD_MOVE if isinstance(job, MoveJob) else DOWNLOAD_DROP if isinstance(job, FileDrop) else DOWNLOAD_FETCH
    return app.send_task(task, args=[job.to_message()], queue=download_queue(node))


# ---- index events: fanout to every capture node -------------------------------------------------
INDEX_EXCHANGE = Exchange("cachetap.index", type="fanout", durable=False)
INDEX_ROUTING_KEY = "index"
# Wire names of the two events (not entry states: "ready" here means "redirect it from now on").
INDEX_READY, INDEX_REMOVED = "ready", "removed"
INDEX_OPS = frozenset({INDEX_READY, INDEX_REMOVED})


def index_event(op: str, keys: list[str], expires: list[float | None] | None = None,
                node: str | None = None) -> dict[str, Any]:
    """A "ready" event may carry each key's deadline (`expires`, epoch seconds or None for none), so
    that capture nodes stop redirecting to a copy the moment it turns stale, and the name of the
    cache node holding the keys (`node`), so that they redirect to that node's cache server."""
    if op not in INDEX_OPS:
        raise ValueError(f"unknown index event {op!r}")
    body: dict[str, Any] = {"op": op, "keys": keys}
    if node is not None:
        if not NODE_NAME.fullmatch(node):
            raise ValueError(f"not a node name: {node!r}")
        body["node"] = node
    if expires is not None:
        if len(expires) != len(keys):
            raise ValueError("one expiry per key")
        body["expires"] = expires
    return body


def index_queue(name: str) -> Queue:
    """A listener's own queue on the index fanout; `name` must be stable for that listener across
    restarts (the embedded broker would keep a dead process's queue collecting events)."""
    return Queue(name, exchange=INDEX_EXCHANGE, routing_key=INDEX_ROUTING_KEY, durable=False, auto_delete=True)


def follow_index_events(app: Any, queue: Queue, on_body: Callable[[dict], None], stop: threading.Event, *,
                        on_connected: Callable[[], None] = lambda: None,
                        on_lost: Callable[[], None] = lambda: None, who: str = "index events") -> None:
    """Consume `queue` until `stop` is set, handing each dict body to `on_body` (then acked whatever
    happens), and reconnecting with back-off (0.5 s doubling to 30 s) when the broker goes away.
    The queue is purged on the first connection only: the listener reconciles after a start.
    `on_connected` runs each time the consumer is bound again, `on_lost` each time it drops."""
    backoff, first = 0.5, True

    def on_message(body: Any, message: Any) -> None:
        try:
            if isinstance(body, dict):
                on_body(body)
        finally:
            message.ack()

    while not stop.is_set():
        try:
            with app.connection_for_read() as conn:
                channel = conn.channel()
                bound = queue(channel)
                bound.declare()
                if first:
                    bound.purge()
                    first = False
                with Consumer(channel, queues=[bound], callbacks=[on_message], accept=["json"]):
                    on_connected()
                    backoff = 0.5
                    while not stop.is_set():
                        try:
                            conn.drain_events(timeout=0.5)
                        except TimeoutError:
                            continue
        except Exception as exc:  # broker down: keep trying; each listener says what bounds the loss
            on_lost()
            log.warning("%s: %s; retrying in %.1fs", who, exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)


def decode_index_event(body: Any) -> tuple[str, list[Any], list[float | None], str | None] | None:
    """(op, keys, expiries, node) of a well-formed event, else None; each key is still the receiver's
    to check. Expiries that are missing (an older sender) or malformed are None; so is a node that is
    missing or no node name (the receiver only ever looks a name up in its node registry)."""
    if not isinstance(body, Mapping):
        return None
    op, keys = body.get("op"), body.get("keys")
    if op not in INDEX_OPS or not isinstance(keys, list):
        return None
    expires = body.get("expires")
    if not isinstance(expires, list) or len(expires) != len(keys):
        expires = [None] * len(keys)
    node = body.get("node")
    if not (isinstance(node, str) and NODE_NAME.fullmatch(node)):
        node = None
    return (op, keys, [e if isinstance(e, (int, float)) and not isinstance(e, bool) else None for e in expires],
            node)


# ---- sightings: capture -> analyze --------------------------------------------------------------

# What analyze never reads stays off the queue: the request-target (the URL carries what matters) and
# the User-Agent would be most of each message's bytes, chosen by the client (up to a whole head).
NOT_SENT = ("target", "user_agent")


def encode_sighting(sighting: Sighting) -> dict[str, Any]:
    data = sighting.to_dict()
    for name in NOT_SENT:
        del data[name]
    return data


def decode_sighting(item: Any) -> Sighting | None:
    """A sighting from one item of an analyze batch, or None when anything in it is malformed."""
    if not isinstance(item, dict):
        return None
    try:
        sighting = Sighting.from_dict(item)
    except (KeyError, TypeError):
        return None
    ok = (isinstance(sighting.key, str) and KEY_PATTERN.fullmatch(sighting.key) is not None
          and isinstance(sighting.url, str) and sighting.url.startswith("http://")
          and isinstance(sighting.host, str) and sighting.host != ""
          and isinstance(sighting.server, str) and isinstance(sighting.client, str)
          and isinstance(sighting.ts, (int, float)) and not isinstance(sighting.ts, bool))
    return sighting if ok else None


# ---- download jobs: analyze, prefetch and reclaim -> download -----------------------------------
MAX_CLAIM = 36  # a uuid4 in text form


@dataclass(frozen=True, slots=True)
class DownloadJob:
    """One admitted object to fetch, under the claim token its entry was queued with.

    Besides key and claim (checked here: they decide which row the worker may touch) the values are
    the probe's, carried as they came; `fetch.download.validate_job` judges them before any I/O.
    """

    key: str
    url: str
    claim: str
    size: Any = None
    etag: Any = None
    last_modified: Any = None
    content_type: Any = None

    @classmethod
    def from_probe(cls, key: str, url: str, probe: ProbeResult, claim: str) -> DownloadJob:
        return cls(key=key, url=url, claim=claim, size=probe.size, etag=probe.etag,
                   last_modified=probe.last_modified, content_type=probe.content_type)

    @classmethod
    def from_entry(cls, entry: EntryView, claim: str) -> DownloadJob:
        """The job again from what the catalog kept of the probe (a stale claim being re-sent)."""
        return cls(key=entry.key, url=entry.url, claim=claim, size=entry.size, etag=entry.etag,
                   last_modified=entry.last_modified, content_type=entry.content_type)

    def to_message(self) -> dict[str, Any]:
        return {"key": self.key, "url": self.url, "size": self.size, "etag": self.etag,
                "last_modified": self.last_modified, "content_type": self.content_type, "claim": self.claim}

    @classmethod
    def from_message(cls, message: Any) -> DownloadJob | None:
        """The job, or None when the message has no valid key and claim (nothing it names may be touched)."""
        if not isinstance(message, Mapping):
            return None
        key, claim = message.get("key"), message.get("claim")
        if not (isinstance(key, str) and KEY_PATTERN.fullmatch(key)):
            return None
        if not (isinstance(claim, str) and 0 < len(claim) <= MAX_CLAIM):
            return None
        return cls(key=key, url=message.get("url"), claim=claim, size=message.get("size"),
                   etag=message.get("etag"), last_modified=message.get("last_modified"),
                   content_type=message.get("content_type"))


def job_key(message: Any) -> str | None:
    """The cache key a task message is about, if any of its arguments is a job with a valid key."""
    if isinstance(message, Mapping):
        key = message.get("key")
        if isinstance(key, str) and KEY_PATTERN.fullmatch(key):
            return key
    return None


@dataclass(frozen=True, slots=True)
class MoveJob:
    """Copy a ready object from the node holding it (`holder`, alive) to the node now owning its key,
    under the move claim `claim`. Only names travel: the holder's URL is read from the node registry."""

    key: str
    claim: str
    holder: str

    def to_message(self) -> dict[str, Any]:
        return {"key": self.key, "claim": self.claim, "holder": self.holder}

    @classmethod
    def from_message(cls, message: Any) -> MoveJob | None:
        if not isinstance(message, Mapping):
            return None
        key, claim, holder = message.get("key"), message.get("claim"), message.get("holder")
        if not (isinstance(key, str) and KEY_PATTERN.fullmatch(key)):
            return None
        if not (isinstance(claim, str) and 0 < len(claim) <= MAX_CLAIM):
            return None
        if not (isinstance(holder, str) and NODE_NAME.fullmatch(holder)):
            return None
        return cls(key, claim, holder)


@dataclass(frozen=True, slots=True)
class FileDrop:
    """Delete the file of an evicted object on the node holding it, unless a row still names it: sent
    to that node's queue by whichever node removed the row (a purge, an eviction by the cluster's
    policy). `disk` is only ever looked up among the receiver's own disks, never used as a path."""

    blob: str
    disk: str | None

    def to_message(self) -> dict[str, Any]:
        return {"blob": self.blob, "disk": self.disk}

    @classmethod
    def from_message(cls, message: Any) -> FileDrop | None:
        if not isinstance(message, Mapping):
            return None
        blob, disk = message.get("blob"), message.get("disk")
        if not (isinstance(blob, str) and len(blob) == 64 and all(c in "0123456789abcdef" for c in blob)):
            return None
        if not (disk is None or (isinstance(disk, str) and 0 < len(disk) <= 255)):
            return None
        return cls(blob, disk)
