"""Logging to stdout, configured once by each entry point."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stdout with the process id, at ``level``."""
    logging.basicConfig(
        stream=sys.stdout,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # aio-pika and aiormq log every reconnect attempt at WARNING; keep them, drop their DEBUG.
    logging.getLogger("aiormq").setLevel(max(logging.INFO, logging.getLogger().level))
