"""What Celery knows, for `cachetap status TASK_ID` and the console: a task's state and result,
workers (inspect) and queue depths."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cachetap.wire import QUEUES, download_queue

if TYPE_CHECKING:
    from cachetap.tasks.app import CachetapCelery


class NotATaskId(ValueError):
    pass


def task_report(app: CachetapCelery, task_id: str) -> dict[str, Any] | None:
    """{task_id, state, result | error, traceback_tail} of a task; None when nothing knows it.
    Raises NotATaskId for a string that is no task id."""
    from celery.result import AsyncResult

    try:
        uuid.UUID(task_id)
    except ValueError:
        raise NotATaskId(task_id) from None
    result = AsyncResult(task_id, app=app)
    report: dict[str, Any] = {"task_id": task_id, "state": result.state}
    # Celery calls every id it has no record of PENDING; the catalog knows the ones we sent.
    if result.state == "PENDING" and app.catalog.by_task_id(task_id) is None:
        return None
    if result.state == "SUCCESS":
        report["result"] = result.result
    elif result.state in ("FAILURE", "RETRY"):
        report["error"] = f"{type(result.result).__name__}: {result.result}"
        if result.traceback:
            report["traceback_tail"] = result.traceback.strip().splitlines()[-1]
    return report


def queue_depths(app: CachetapCelery, nodes: Iterable[str] = ()) -> dict[str, int | None]:
    """Messages waiting per queue, the download queues of `nodes` included (None where the broker
    would not say)."""
    depths: dict[str, int | None] = {}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for name in [queue.name for queue in QUEUES] + [download_queue(node) for node in nodes]:
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except Exception:  # not declared yet, or a transport that cannot count
                depths[name] = None
    return depths


def workers(app: CachetapCelery, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Workers that answer a broadcast within `timeout`: name, queues, tasks running, pool size."""
    inspect = app.control.inspect(timeout=timeout)
    active = inspect.active() or {}
    queues = inspect.active_queues() or {}
    stats = inspect.stats() or {}
    names = sorted(set(active) | set(queues) | set(stats))
    return [{"name": name, "queues": sorted(q["name"] for q in queues.get(name, [])),
             "active": len(active.get(name, [])),
             "concurrency": (stats.get(name, {}).get("pool") or {}).get("max-concurrency")} for name in names]
