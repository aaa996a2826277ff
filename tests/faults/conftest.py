"""Fixtures of the fault-injection tests: real Postroom processes on the session's broker.

``processes`` starts ``python -m workers mail`` and gunicorn subprocesses (see
``tests/processes.py``) and ends the ones still running after the test; their logs are
printed at teardown, so a failing test shows them. ``archive`` is a fresh archive (SQLite,
or a PostgreSQL schema of its own when parametrized indirectly with "postgres") with the
schema applied, and the environment a process needs to use it; ``api`` is the
app in this process on the same archive (for registering users and sending, when the API
itself is not what the test is about); ``people`` are users alice, bob, carol and dave.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg2
import pytest

from app import create_app
from app.store import schema
from app.store.db import open_database
from config.settings import Settings
from processes import Processes, postroom_env, purge_queues, redeclare_topology
from support import register

SECRET_KEY = "test-secret-key"


@dataclass
class Archive:
    """A fresh archive database and the broker it is fed from."""

    amqp_url: str
    database_url: str
    var_dir: Path
    schema_name: str | None = None  # PostgreSQL only

    def env(self, **extra: str) -> dict[str, str]:
        """Return the environment of a Postroom process on this archive and broker."""
        return postroom_env(self.amqp_url, self.database_url, self.var_dir, SECRET_KEY, **extra)

    def settings(self) -> Settings:
        """Return settings of an in-process app on this archive."""
        return Settings(
            amqp_url=self.amqp_url,
            database_url=self.database_url,
            var_dir=str(self.var_dir),
            secret_keys=(SECRET_KEY,),
            password_time_cost=1,
            password_memory_cost_kib=64,
        )


@pytest.fixture
def archive(request: pytest.FixtureRequest, broker, tmp_path) -> Iterator[Archive]:
    """A fresh archive, SQLite unless parametrized ``indirect`` with "postgres" (a schema of
    its own, dropped afterwards); Postroom's queues declared and empty."""
    redeclare_topology(broker.url)
    purge_queues(broker.url)
    kind = getattr(request, "param", "sqlite")
    schema_name = None
    if kind == "sqlite":
        database_url = f"sqlite:///{tmp_path}/postroom.db"
    else:
        base = request.getfixturevalue("postgres_url")
        schema_name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg2.connect(base) as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA {schema_name}")
        conn.close()
        separator = "&" if "?" in base else "?"
        database_url = f"{base}{separator}options=-csearch_path%3D{schema_name}"
    database = open_database(database_url)
    schema.upgrade(database)
    database.close()
    try:
        yield Archive(broker.url, database_url, tmp_path / "var", schema_name)
    finally:
        if schema_name:
            conn = psycopg2.connect(request.getfixturevalue("postgres_url"))
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute("SET lock_timeout = '10s'")
                cursor.execute(f"DROP SCHEMA {schema_name} CASCADE")
            conn.close()


@pytest.fixture
def processes(tmp_path) -> Iterator[Processes]:
    """Start subprocesses; whatever still runs is stopped after the test, logs printed."""
    started = Processes(tmp_path / "logs")
    try:
        yield started
    finally:
        started.stop_all()
        if started.started:
            print(started.tails())


@pytest.fixture
def api(archive):
    """A test client of the app in this process, on the archive."""
    application = create_app(archive.settings())
    yield application.test_client()
    application.extensions["postroom"].publisher.close()


@pytest.fixture
def people(api) -> dict[str, dict[str, str]]:
    """Registered users alice, bob, carol and dave: their auth headers by name."""
    return {name: register(api, name) for name in ("alice", "bob", "carol", "dave")}
