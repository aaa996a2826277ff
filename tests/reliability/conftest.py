"""Fixtures of the reliability scenarios (issue #5): real processes under faults, checked
against a ledger of every send (``ledger.py``).

- ``fault_broker``: a RabbitMQ node of its own (node ``postroom-reliability-<pid>``, own
  ports, config and data directory), started by pytest-rabbitmq through ``node_starter``
  like ``tests/auth/conftest.py`` does, so stopping, blocking or SIGKILLing it never touches
  the session's ``broker`` or any other test. Module-scoped: the node is stopped when the
  module ends (and started again, same data directory, if another module asks for it).
  Besides the session broker's API it can :meth:`FaultBroker.kill` the node's Erlang VM
  (SIGKILL) and :meth:`FaultBroker.restart` it: the same pytest-rabbitmq executor starts a
  fresh VM with the same node name, ports and data directory.
- ``scenario``: one scenario's world: a fresh archive (SQLite, or a PostgreSQL schema of its
  own with ``indirect`` parametrization ``"postgres"``), gunicorn (3 processes × 8 threads,
  ``--preload``) and two ``python -m workers mail`` processes on the fault broker, five users
  with tokens, a :class:`ledger.Ledger`, and :meth:`Scenario.finish`, which joins the load,
  retries, waits for the queues to drain, stops the workers gracefully, checks the archive,
  and records ``var/reliability/<scenario>.json`` plus a one-line summary.

Size: ``POSTROOM_RELIABILITY_SCALE=full`` runs the issue's sizes (20,000 sends for scenario 1
...); the default (``ci``) keeps each scenario within about a minute.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import psycopg2
import pytest
from pytest_rabbitmq import factories

from app.store import schema
from app.store.db import open_database
from harness import SCALE, FaultBroker, Scenario
from processes import Processes, purge_queues, redeclare_topology

_NODE = f"postroom-reliability-{os.getpid()}@localhost"
_CONF_DIR = Path(tempfile.gettempdir()) / f"postroom-reliability-rabbitmq-{os.getpid()}"
_postroom_reliability_rabbitmq_proc = factories.rabbitmq_proc(node=_NODE, plugindir=_CONF_DIR)

_SUMMARIES = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SUMMARIES] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    lines = config.stash.get(_SUMMARIES, [])
    if lines:
        terminalreporter.write_sep("-", f"reliability scenarios ({SCALE} size)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def fault_broker(request: pytest.FixtureRequest, node_starter) -> Iterator[FaultBroker]:
    """The reliability node, dedicated to the module; stopped when the module ends."""
    node = node_starter(request, "_postroom_reliability_rabbitmq_proc", _CONF_DIR)
    broker = FaultBroker(node)
    broker.ensure_up()  # a previous module stopped it: start it again
    try:
        yield broker
    finally:
        broker.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _remove_reliability_conf_dir() -> Iterator[None]:
    yield
    shutil.rmtree(_CONF_DIR, ignore_errors=True)


@pytest.fixture
def scenario(request: pytest.FixtureRequest, fault_broker: FaultBroker, tmp_path: Path) -> Iterator[Scenario]:
    """A scenario on the fault broker: fresh archive (SQLite, or ``postgres`` via indirect
    parametrization), empty queues, no alarm; processes stopped and logs printed after."""
    fault_broker.ensure_up()
    redeclare_topology(fault_broker.url)
    purge_queues(fault_broker.url)
    kind = getattr(request, "param", "sqlite")
    schema_name = None
    if kind == "sqlite":
        database_url = f"sqlite:///{tmp_path}/postroom.db"
    else:
        base = request.getfixturevalue("postgres_url")
        schema_name = f"reliability_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(base)
        with conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA {schema_name}")
        conn.close()
        separator = "&" if "?" in base else "?"
        database_url = (f"{base}{separator}options=-csearch_path%3D{schema_name}"
                        f"&application_name=postroom-{schema_name}")
    database = open_database(database_url)
    schema.upgrade(database)
    database.close()
    name = request.node.originalname.removeprefix("test_").replace("_", "-")
    if kind != "sqlite":
        name += f"-{kind}"
    log_dir = tmp_path / "logs"
    processes = Processes(log_dir)
    world = Scenario(name=name, broker=fault_broker, database=kind, database_url=database_url,
                     var_dir=tmp_path / "var", processes=processes, log_dir=log_dir,
                     summaries=request.config.stash[_SUMMARIES])
    world.notes["schema"] = schema_name
    try:
        yield world
    finally:
        processes.stop_all()
        if processes.started and (world.report is None or world.report.problems()):
            print(processes.tails())
        try:
            fault_broker.ensure_up()
        finally:
            if schema_name:
                conn = psycopg2.connect(request.getfixturevalue("postgres_url"))
                conn.autocommit = True
                with conn.cursor() as cursor:
                    cursor.execute("SET lock_timeout = '10s'")
                    cursor.execute(f"DROP SCHEMA {schema_name} CASCADE")
                conn.close()
