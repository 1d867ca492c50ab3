"""Celery side of cachetap: the app (queues, hygiene, beat) and one thin module per queue."""

from cachetap.tasks.app import CachetapCelery, create_app

__all__ = ["CachetapCelery", "create_app"]
