"""Celery side of cachetap: the app (queues, routes, hygiene) and one thin module per queue."""

from cachetap.tasks.app import ROUTES, CachetapCelery, create_app

__all__ = ["ROUTES", "CachetapCelery", "create_app"]
