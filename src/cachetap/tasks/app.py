"""The Celery app: the four queues and their routes (named in `cachetap.wire`), task hygiene, beat
schedule, lazy catalog.

Queues: `capture` (pcap replays), `analyze` (sighting batches: counting, admission, probe),
`download` (one fetch per admitted key), `schedule` (beat housekeeping). Every task name is routed
in `wire.ROUTES`; nothing relies on Celery's default queue.

Brokers. `redis://` and `amqp://` URLs in `settings.broker_url` are used as given (many machines).
The embedded default (empty `broker_url`) is kombu's `filesystem://` transport under
`settings.broker_dir` with a `db+sqlite` result backend under `cache_dir`. Its limits:
  * single machine only: producers and workers must share the directory (a local filesystem);
  * a message is moved out of the queue folder when a worker *receives* it, so `acks_late` cannot
    re-deliver it after a `kill -9`. What guarantees that no admitted key is lost is not the
    broker but the catalog: claims are leases with a timestamp, and `cachetap.schedule.reclaim`
    (beat) hands stale `probing` keys back to counting and re-sends stale `queued`/`downloading`
    keys to the download queue with a fresh claim;
  * received messages are kept in `broker/processed` (an atomic rename on the same filesystem is
    what makes "exactly one worker receives it" hold; kombu's default moves them to /tmp, which may
    be another filesystem, where the move is copy + delete and two workers could both get a copy).
    `cachetap.schedule.prune_broker` deletes them after a while;
  * fanout works through the `control` folder, so `celery inspect`/remote control reach workers,
    but polling makes replies slow; events/gossip/mingle are pointless on one machine.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.signals import beat_init, celeryd_after_setup, celeryd_init, worker_ready, worker_shutdown

from cachetap.core.lifecycle import EntryState, Event
from cachetap.logs import quiet_kombu
from cachetap.metrics import use_box_directory
from cachetap.reloading import LiveSettings
from cachetap.settings import Settings
from cachetap.tasks.embedded_broker import TRANSPORT as EMBEDDED_TRANSPORT
from cachetap.wire import (DOWNLOAD_QUEUE, QUEUES, ROUTES, SCHEDULE_CLEANUP, SCHEDULE_PRUNE_BROKER, SCHEDULE_PRUNE_HITS,
                           SCHEDULE_QUOTA, SCHEDULE_RECLAIM, SCHEDULE_RECONCILE, SCHEDULE_REVALIDATE, SCHEDULE_STATS,
                           download_queue, job_key)

if TYPE_CHECKING:  # imported lazily at run time: a worker of one queue need not load the others' code
    from cachetap.core.rules import Rules
    from cachetap.fetch.resolver import Resolver
    from cachetap.store.catalog import Catalog
    from cachetap.store.disks import Disks

log = logging.getLogger(__name__)
_HEARTBEATS: list[Any] = []  # this process's node-registry heartbeats (signals are per process too)

TASK_MODULES = ("cachetap.tasks.analyze", "cachetap.tasks.schedule", "cachetap.tasks.housekeeping",
                "cachetap.tasks.download", "cachetap.tasks.rehome", "cachetap.tasks.capture")

# ---- retry policy -------------------------------------------------------------------------------
RETRY_BASE = 2.0
RETRY_MAX_DELAY = 300.0
MAX_RETRIES = 6

# Hits older than this many admission windows are pruned; processed broker files after this long.
PRUNE_HITS_EVERY = 3600.0
PROCESSED_MAX_AGE = 600.0
STATS_EVERY = 60.0  # the console's gauges: one sample a minute (store/stats.py)


def retry_countdown(retries: int, base: float = RETRY_BASE, cap: float = RETRY_MAX_DELAY) -> float:
    """Exponential backoff with full jitter: uniform in [base, min(cap, base * 2**retries)]."""
    return random.uniform(base, max(base, min(cap, base * (2 ** retries))))


class CachetapTask(Task):
    """Base task: JSON only, late acks; a final failure is logged and recorded against its key."""

    acks_late = True
    reject_on_worker_lost = True
    max_retries = MAX_RETRIES

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        reason = f"{self.name}: {type(exc).__name__}: {exc}"[:500]
        log.error("task %s failed for good: %s", task_id, reason)
        key = _key_of(args, kwargs)
        if key is None:
            return
        try:
            entry = self.app.catalog.get(key)
            if entry is not None and entry.state == EntryState.FAILED and entry.reason:
                return  # the task recorded why, in its own words ("download: size_changed ...")
            self.app.catalog.mark(key, Event.GIVE_UP, reason=reason)  # from whatever state it is in
        except Exception as mark_exc:  # the catalog may be what failed; the log line above stays
            log.error("could not record failure of %s in the catalog: %s", key, mark_exc)


def _key_of(args: tuple, kwargs: dict) -> str | None:
    for value in (*args, *kwargs.values()):
        key = job_key(value)
        if key is not None:
            return key
    return None


class CachetapCelery(Celery):
    """A Celery app that carries its `Settings` and, per process, a migrated `Catalog`."""

    def __init__(self, settings: Settings, **kwargs: Any):
        super().__init__("cachetap", **kwargs)
        self.live = LiveSettings(settings)  # follows `cachetap reload` once a worker or beat watches it
        self._lazy_lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._catalog_pid: int | None = None
        self._resolver: Resolver | None = None
        self._rules: Rules | None = None
        self._rules_for: Settings | None = None
        self._disks: Disks | None = None
        self._disks_for: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The settings now: LIVE ones change on `cachetap reload` (read them per task, never keep them)."""
        return self.live.settings

    @property
    def catalog(self) -> Catalog:
        """The catalog, created and migrated once per process (a forked child makes its own)."""
        pid = os.getpid()
        with self._lazy_lock:
            if self._catalog is None or self._catalog_pid != pid:
                from cachetap.store.catalog import open_catalog

                self._catalog, self._catalog_pid = open_catalog(self.settings.effective_database_url), pid
            return self._catalog

    @property
    def resolver(self) -> Resolver:
        """The cache's own name resolution (overrides from settings, then DNS) and the fetch guard."""
        with self._lazy_lock:
            if self._resolver is None:
                from cachetap.fetch.resolver import Resolver

                self._resolver = Resolver.from_settings(self.settings)
            return self._resolver

    @property
    def rules(self) -> Rules:
        """The request and probe rules (`core.rules.Rules`) for these settings."""
        with self._lazy_lock:
            settings = self.settings
            if self._rules is None or self._rules_for is not settings:  # built again after a reload
                from cachetap.core.rules import Rules

                self._rules, self._rules_for = Rules.from_settings(settings), settings
            return self._rules

    @property
    def disks(self) -> Disks:
        """This node's disks (store/disks.py), opened once per settings (a missing one is named once)."""
        with self._lazy_lock:
            settings = self.settings
            if self._disks is None or self._disks_for is not settings:  # min_free_bytes follows a reload
                from cachetap.store.disks import Disks

                self._disks, self._disks_for = Disks.from_settings(settings), settings
            return self._disks


def create_app(settings: Settings) -> CachetapCelery:
    quiet_kombu()
    app = CachetapCelery(settings, task_cls=CachetapTask)
    app.conf.update(celery_config(settings))
    app.conf.include = list(TASK_MODULES)
    return app


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for these settings (creating the embedded broker's folders)."""
    conf: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.effective_result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": QUEUES,
        "task_routes": (ROUTES,),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": False,
        "result_expires": timedelta(hours=6),
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": True,
        "beat_schedule": beat_schedule(settings),
        "beat_scheduler": "cachetap.tasks.beat:LeasedScheduler",  # one active beat per catalog
        "timezone": "UTC",
    }
    if settings.embedded_broker or not settings.result_backend or not settings.database_url:
        from cachetap.privileges import prepare_cache_dir

        prepare_cache_dir(settings.cache_dir, settings.run_as_user)
    if settings.embedded_broker:
        conf["broker_transport"] = EMBEDDED_TRANSPORT  # filesystem://, with atomic message files
        conf["broker_transport_options"] = embedded_transport_options(settings.broker_dir,
                                                                      settings.broker_polling_interval)
        conf["worker_enable_remote_control"] = True
        conf["worker_send_task_events"] = False
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        # kombu scans for overdue unacked messages only every 10 x 10 s by default; one cheap scan
        # every few seconds re-delivers a killed worker's task soon after its visibility timeout.
        vt = settings.broker_visibility_timeout
        conf["broker_transport_options"] = {"visibility_timeout": vt, "unacked_restore_throttle": 1,
                                            "unacked_restore_interval": max(1, min(10, int(vt / 2)))}
    return conf


def embedded_transport_options(broker_dir: Path, polling_interval: float) -> dict[str, Any]:
    folders = {name: broker_dir / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        # Producers write where consumers read: one folder.
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "store_processed": True,
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "polling_interval": polling_interval,
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    # Often enough that a download whose worker died resumes within about a lease and a half.
    reclaim_every = max(5.0, min(settings.claim_timeout / 4, settings.download_lease / 2))
    schedule = {
        "prune-hits": {"task": SCHEDULE_PRUNE_HITS, "schedule": PRUNE_HITS_EVERY},
        "reclaim-stale-claims": {"task": SCHEDULE_RECLAIM, "schedule": reclaim_every},
        "cleanup": {"task": SCHEDULE_CLEANUP, "schedule": float(settings.housekeeping_interval)},
        "quota": {"task": SCHEDULE_QUOTA, "schedule": float(settings.housekeeping_interval)},
        "reconcile": {"task": SCHEDULE_RECONCILE, "schedule": float(settings.housekeeping_interval)},
        "revalidate": {"task": SCHEDULE_REVALIDATE, "schedule": float(settings.revalidate_interval)},
        # The console's gauges (objects, bytes stored, disk free) once a minute; see store/stats.py.
        "stats": {"task": SCHEDULE_STATS, "schedule": STATS_EVERY},
    }
    if settings.embedded_broker:
        schedule["prune-broker"] = {"task": SCHEDULE_PRUNE_BROKER, "schedule": PROCESSED_MAX_AGE}
    return schedule


def prune_processed(broker_dir: Path, older_than: float, now: float | None = None) -> int:
    """Delete received embedded-broker messages older than `older_than` seconds; returns how many."""
    folder = broker_dir / "processed"
    cutoff = (time.time() if now is None else now) - older_than
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # another worker pruned it first
    return removed


@celeryd_after_setup.connect
def _apply_log_level(sender: str, instance: Any, **_: Any) -> None:
    """cachetap's own loggers follow settings.log_level whatever `-l` the worker was given."""
    settings = getattr(instance.app, "settings", None)
    if isinstance(settings, Settings):
        logging.getLogger("cachetap").setLevel(settings.log_level)
    if settings is None or getattr(settings, "log_level", "") != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if isinstance(instance.app, CachetapCelery):  # the pool's children follow too (forked later)
        instance.app.live.watch(f"worker {sender}")
        _consume_own_download_queue(instance.app)


def _consume_own_download_queue(app: CachetapCelery) -> None:
    """A download worker also takes the jobs placed on its node (`download.<node>`, wire.py)."""
    queues = app.amqp.queues
    if queues.consume_from is None or DOWNLOAD_QUEUE in queues.consume_from:  # None: every queue
        own = download_queue(app.settings.effective_node_name)
        queues.select_add(own)
        log.info("download worker of node %s: consuming %s too", app.settings.effective_node_name, own)


@celeryd_init.connect
def _worker_metrics_folder(sender: str, instance: Any, **_: Any) -> None:
    """Before the pool forks: every process of the worker writes to the machine's metrics folder."""
    settings = getattr(instance.app, "settings", None)
    if isinstance(settings, Settings):
        use_box_directory(settings.cache_dir)


@beat_init.connect
def _beat_follows_reloads(sender: Any, **_: Any) -> None:
    if isinstance(sender.app, CachetapCelery):
        sender.app.live.watch("beat")
        _start_heartbeat(sender.app, "beat", {})


def _start_heartbeat(app: CachetapCelery, role: str, report: dict[str, Any], process: str | None = None) -> None:
    """Register this process in the node registry (store/nodes.py) for as long as it runs; `process`
    names it when the node's other processes of `role` share the row (its workers)."""
    from cachetap.store.nodes import start_heartbeat

    settings = app.settings
    try:
        _HEARTBEATS.append(start_heartbeat(settings.effective_database_url, settings.effective_node_name,
                                           role, settings.node_heartbeat_interval, lambda: {"report": report},
                                           process=process))
    except Exception as exc:  # the registry is for placement and display; the worker works without it
        log.warning("node registry: heartbeat (%s) not started: %s", role, exc)


@worker_ready.connect
def _worker_heartbeat(sender: Any, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if isinstance(app, CachetapCelery):
        queues = sorted(q.name for q in getattr(sender.task_consumer, "queues", ()) or ())
        # A node runs several workers (download, analyze, schedule): each one's queues in the one row.
        _start_heartbeat(app, "worker", {"queues": queues}, process=str(getattr(sender, "hostname", os.getpid())))


@worker_shutdown.connect
def _worker_leaves(**_: Any) -> None:
    while _HEARTBEATS:
        _HEARTBEATS.pop().stop()
