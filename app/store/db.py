"""Open the database named by a URL and bind every model to it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect

logger = logging.getLogger(__name__)

#: Every model binds to this proxy; :func:`open_database` points it at a real database.
database_proxy = peewee.DatabaseProxy()

#: Errors that say "try again later", not "this input is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (peewee.OperationalError, peewee.InterfaceError)

SQLITE_PRAGMAS = {
    # WAL lets readers run beside the one writer; busy_timeout makes a writer wait for
    # the lock instead of failing at once (peewee #1071, #1188).
    "journal_mode": "wal",
    "busy_timeout": 10000,
    # FULL: an acked message must survive power loss, not only a process crash.
    "synchronous": "full",
    "foreign_keys": 1,
    "cache_size": -32000,
}


def make_database(url: str) -> peewee.Database:
    """Return an unconnected Peewee database for a ``sqlite:///`` or ``postgresql://`` URL."""
    scheme = urlparse(url).scheme
    if scheme.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # BEGIN IMMEDIATE: a write transaction takes the lock up front, so it never fails
        # half-way with "database is locked" when it upgrades from a read.
        return peewee.SqliteDatabase(
            path or ":memory:", pragmas=SQLITE_PRAGMAS, timeout=10, lock_type="IMMEDIATE", autoconnect=True
        )
    if scheme.startswith("postgres"):
        return connect(url, autoconnect=True, autorollback=False)
    raise ValueError(f"unsupported database URL scheme {scheme!r} (use sqlite:/// or postgresql://)")


def open_database(url: str) -> peewee.Database:
    """Create the database for ``url`` and bind the model proxy to it."""
    database = make_database(url)
    database_proxy.initialize(database)
    logger.debug("database %s opened in pid %s", redact(url), os.getpid())
    return database


def is_sqlite(database: peewee.Database) -> bool:
    """Return whether ``database`` is SQLite."""
    return isinstance(database, peewee.SqliteDatabase)


def reset_connection(database: peewee.Database) -> None:
    """Drop this thread's connection so that the next query opens a fresh one."""
    try:
        if not database.is_closed():
            database.close()
    except Exception:  # a broken connection may fail to close; it is gone either way
        database._state.reset()


def redact(url: str) -> str:
    """Return ``url`` with its password hidden, for logs."""
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
