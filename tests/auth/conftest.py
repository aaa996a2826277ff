"""A second RabbitMQ node that asks Postroom who may do what (rabbitmq_auth_backend_http),
configured from ``config/rabbitmq/``, and the Postroom app it asks, served over real HTTP."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest
from pytest_rabbitmq import factories
from werkzeug.serving import make_server

from app import create_app
from app.store import schema
from app.store.db import open_database
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
_AUTH_CONF_DIR = Path(tempfile.gettempdir()) / f"postroom-test-rabbitmq-auth-{os.getpid()}"

_postroom_auth_rabbitmq_proc = factories.rabbitmq_proc(node=f"postroom-auth-{os.getpid()}@localhost",
                                                       plugindir=_AUTH_CONF_DIR)


class Gateway:
    """A real HTTP server whose WSGI app can be set after it started listening."""

    def __init__(self) -> None:
        self.app = None
        self.server = make_server("127.0.0.1", 0, self, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@pytest.fixture(scope="session")
def auth_gateway() -> Iterator[Gateway]:
    """The HTTP endpoint RabbitMQ's auth backend calls."""
    gateway = Gateway()
    yield gateway
    gateway.server.shutdown()


@pytest.fixture(scope="session")
def auth_broker(request: pytest.FixtureRequest, auth_gateway: Gateway, node_starter):
    """A RabbitMQ node with the project's HTTP auth config, pointed at the gateway."""
    conf = (ROOT / "config/rabbitmq/rabbitmq.conf").read_text().replace("POSTROOM_AUTH_BASE", auth_gateway.url)
    plugins = (ROOT / "config/rabbitmq/enabled_plugins").read_text().strip().rstrip(".")
    node = node_starter(request, "_postroom_auth_rabbitmq_proc", _AUTH_CONF_DIR, "\n" + conf, plugins)
    try:
        yield node
    finally:
        shutil.rmtree(_AUTH_CONF_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_settings(auth_broker, tmp_path_factory) -> Settings:
    """Settings of the app under test: the auth broker (Postroom's own user is guest)."""
    path = tmp_path_factory.mktemp("auth")
    database = open_database(f"sqlite:///{path}/postroom.db")
    schema.upgrade(database)
    return Settings(
        amqp_url=auth_broker.url, database_url=f"sqlite:///{path}/postroom.db", var_dir=str(path / "var"),
        secret_keys=("auth-test-key",), password_time_cost=1, password_memory_cost_kib=64,
        worker_batch_wait_seconds=0.002,
    )


@pytest.fixture(scope="module")
def auth_app(auth_settings, auth_gateway):
    """The Postroom app, answering both the tests and RabbitMQ."""
    application = create_app(auth_settings)
    auth_gateway.app = application
    yield application
    application.extensions["postroom"].publisher.close()
