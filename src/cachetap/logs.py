"""Logging shared by every cachetap process: what stays out of an operator's log by default."""

from __future__ import annotations

import logging


class _DropNoHostname(logging.Filter):
    """kombu warns "No hostname was supplied" for every connection to the embedded broker's
    filesystem:// URL, which has no host by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No hostname was supplied")


def quiet_kombu() -> None:
    logger = logging.getLogger("kombu.connection")
    if not any(isinstance(f, _DropNoHostname) for f in logger.filters):
        logger.addFilter(_DropNoHostname())
