"""Top-level test fixtures: a private RabbitMQ node per test session, and PostgreSQL.

``broker``: one RabbitMQ node, started once per session by pytest-rabbitmq from Debian's
real scripts (/usr/lib/rabbitmq/bin, the pytest-rabbitmq defaults; override with
``--rabbitmq-server``/``--rabbitmq-ctl``), beside the system broker: free AMQP and
distribution ports picked at random, its own node name, mnesia and log directories, and its
own (empty) enabled-plugins file, rabbitmq.conf and rabbitmq-env.conf, so nothing is read
from /etc/rabbitmq (whose rabbitmq.conf would make it listen on the system broker's port
5672). It takes about 7-8 s to start.

``postgres_url``: ``POSTROOM_TEST_POSTGRES_URL``; skips when unset, but fails under CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pika
import pytest
from pytest_rabbitmq import factories
from pytest_rabbitmq.factories.executor import RabbitMqExecutor

# Per pytest process (so per xdist worker too): node name and config directory.
_NODE = f"postroom-test-{os.getpid()}@localhost"
_CONF_DIR = Path(tempfile.gettempdir()) / f"postroom-test-rabbitmq-{os.getpid()}"

# The process fixture. Ports are left unset (random free ones); server/ctl/host come from
# pytest-rabbitmq's options, whose defaults are Debian's real scripts and 127.0.0.1.
# Use it through ``broker`` (which sets the environment it needs), never directly.
_startup_key = pytest.StashKey[float]()

_postroom_rabbitmq_proc = factories.rabbitmq_proc(node=_NODE, plugindir=_CONF_DIR)


def _write_rabbitmq_conf_dir(path: Path) -> dict[str, str]:
    """Write the node's own config files; return the extra environment that selects them."""
    path.mkdir(parents=True, exist_ok=True)
    # pytest-rabbitmq points RABBITMQ_ENABLED_PLUGINS_FILE at <plugindir>/plugins.
    (path / "plugins").write_text("[].\n")
    (path / "rabbitmq.conf").write_text(
        "# Postroom test broker: listeners come from RABBITMQ_NODE_PORT/IP_ADDRESS.\n"
        "log.console = false\n"
        "log.file.level = info\n"
    )
    (path / "rabbitmq-env.conf").write_text("# empty on purpose: ignore /etc/rabbitmq/rabbitmq-env.conf\n")
    return {
        "RABBITMQ_CONFIG_FILE": str(path / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(path / "advanced.config"),  # absent: none
        "RABBITMQ_CONF_ENV_FILE": str(path / "rabbitmq-env.conf"),
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def amqp_answers(host: str, port: int, user: str = "guest", password: str = "guest", timeout: float = 3.0) -> bool:
    """True when a client can open (and close) an AMQP connection with these credentials."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        return False
    params = pika.ConnectionParameters(
        host=host,
        port=port,
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=1,
        socket_timeout=timeout,
        stack_timeout=timeout,
        blocked_connection_timeout=timeout,
    )
    try:
        pika.BlockingConnection(params).close()
    except Exception:  # any AMQP/socket error means "not ready yet"
        return False
    return True


@dataclass
class Broker:
    """The session's RabbitMQ node, as the tests see it."""

    proc: RabbitMqExecutor
    env: dict[str, str]  # the environment rabbitmq-server got (for rabbitmqctl)
    ctl_path: str
    host: str
    port: int
    node: str
    startup_seconds: float = 0.0
    log_dir: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def ctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl ARGS`` against this node; raise on failure unless check=False."""
        return subprocess.run(
            [self.ctl_path, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until an AMQP client can log in as guest; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while not amqp_answers(self.host, self.port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ {self.node} did not answer on {self.host}:{self.port} in {timeout} s")
            time.sleep(0.2)

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (the Erlang node stays up): AMQP stops answering."""
        self.ctl("stop_app")

    def start_app(self, timeout: float = 60) -> None:
        """Start the RabbitMQ application again and wait until AMQP answers."""
        self.ctl("start_app")
        self.wait_ready(timeout)


def start_node(request: pytest.FixtureRequest, process_fixture: str, conf_dir: Path,
               extra_conf: str = "", plugins: str = "[]") -> Broker:
    """Start the node of a pytest-rabbitmq process fixture with its own config files."""
    extra_env = _write_rabbitmq_conf_dir(conf_dir)
    if extra_conf:
        with open(conf_dir / "rabbitmq.conf", "a") as conf:
            conf.write(extra_conf)
    (conf_dir / "plugins").write_text(f"{plugins}.\n")
    # pytest-rabbitmq builds the server's environment from os.environ when it starts it,
    # and takes no extra variables: set ours just for the start.
    mp = pytest.MonkeyPatch()
    for key in ("RABBITMQ_NODE_PORT", "RABBITMQ_NODENAME", "ERL_EPMD_PORT"):
        mp.delenv(key, raising=False)
    for key, value in extra_env.items():
        mp.setenv(key, value)
    started = time.monotonic()
    try:
        proc: RabbitMqExecutor = request.getfixturevalue(process_fixture)
    finally:
        mp.undo()
    # Keep them for pytest-rabbitmq's own rabbitmqctl calls (the `rabbitmq` client fixture).
    proc._envvars.update(extra_env)  # noqa: SLF001
    env = {**os.environ, **proc._envvars}  # noqa: SLF001
    b = Broker(
        proc=proc,
        env=env,
        ctl_path=proc.rabbit_ctl,
        host=proc.host,
        port=proc.port,
        node=env["RABBITMQ_NODENAME"],
        log_dir=Path(env["RABBITMQ_LOG_BASE"]),
    )
    b.wait_ready(60)
    b.startup_seconds = time.monotonic() - started
    return b


@pytest.fixture(scope="session")
def node_starter():
    """:func:`start_node`, for conftests of sub-directories that start nodes of their own."""
    return start_node


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A RabbitMQ node of this test session (started on first use, stopped at the end)."""
    b = start_node(request, "_postroom_rabbitmq_proc", _CONF_DIR)
    request.config.stash[_startup_key] = b.startup_seconds
    try:
        yield b
    finally:
        shutil.rmtree(_CONF_DIR, ignore_errors=True)  # the process fixture stops the node after


@pytest.fixture(scope="session")
def rabbitmq_proc(broker: Broker) -> RabbitMqExecutor:
    """pytest-rabbitmq's process fixture name, pointed at our node, so its ``rabbitmq``
    (pika connection, queues cleared after each test) client fixture works here too."""
    return broker.proc


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL test database URL (POSTROOM_TEST_POSTGRES_URL).

    Unset: the test is skipped, except under CI (``CI`` set), where that is a failure."""
    url = os.environ.get("POSTROOM_TEST_POSTGRES_URL", "").strip()
    if not url:
        message = "POSTROOM_TEST_POSTGRES_URL is not set"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI must not skip the PostgreSQL tests", pytrace=False)
        pytest.skip(f"{message} (make test sets it when PostgreSQL answers on 127.0.0.1:5432)")
    return url


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    seconds = config.stash.get(_startup_key, None)
    if seconds is not None:
        terminalreporter.write_line(f"postroom: test RabbitMQ node started in {seconds:.1f} s")
