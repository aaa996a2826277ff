"""Fixtures of the integration tests: a database (SQLite and PostgreSQL), the app on the
session's RabbitMQ, and an archive worker running in a thread of the test process."""

from __future__ import annotations

import uuid
from typing import Iterator

import psycopg2
import pytest

from app import create_app
from app.store import schema
from app.store.db import open_database
from config.settings import Settings
from processes import purge_queues
from support import WorkerThread, register
from workers.posts import GroupPostConsumer


def _with_search_path(url: str, schema_name: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema_name}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/postroom.db"
        return
    base = request.getfixturevalue("postgres_url")
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg2.connect(base) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {name}")
    try:
        yield _with_search_path(base, name)
    finally:
        conn = psycopg2.connect(base)
        conn.autocommit = True
        with conn.cursor() as cursor:
            # Connections of worker threads or processes may still be closing.
            cursor.execute("SET lock_timeout = '10s'")
            cursor.execute(f"DROP SCHEMA {name} CASCADE")
        conn.close()


@pytest.fixture
def settings(broker, database_url, tmp_path) -> Settings:
    """Settings for one test: the session broker, a fresh database, cheap password hashing."""
    purge_queues(broker.url)
    database = open_database(database_url)
    schema.upgrade(database)
    database.close()
    return Settings(
        amqp_url=broker.url,
        database_url=database_url,
        var_dir=str(tmp_path / "var"),
        secret_keys=("test-secret-key",),
        password_time_cost=1,
        password_memory_cost_kib=64,
        worker_batch_wait_seconds=0.002,
    )


@pytest.fixture
def app(settings):
    """The API app; its publisher connects to the test broker on first use."""
    application = create_app(settings)
    yield application
    application.extensions["postroom"].publisher.close()


@pytest.fixture
def client(app):
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def worker(settings) -> Iterator[WorkerThread]:
    """A running archive worker."""
    running = WorkerThread(settings).start()
    yield running
    running.stop()


@pytest.fixture
def post_worker(settings) -> Iterator[WorkerThread]:
    """A running group post archive worker."""
    running = WorkerThread(settings, GroupPostConsumer).start()
    yield running
    running.stop()


@pytest.fixture
def people(client) -> dict[str, dict[str, str]]:
    """Registered users alice, bob, carol and dave: their auth headers by name."""
    return {name: register(client, name) for name in ("alice", "bob", "carol", "dave")}
