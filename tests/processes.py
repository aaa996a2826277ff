"""Helpers of the delivery and fault tests (import as ``processes``).

- Real Postroom processes: ``gunicorn 'app:create_app()'`` and ``python -m workers mail``,
  started with the environment a deployment gives them (``POSTROOM_*``), each logging to a
  file whose tail goes into failure messages. Only processes started here are ever stopped,
  by their own pid.
- The test broker, seen from outside: queue depths, draining a queue, purging, and
  re-declaring the topology after a test removed part of it (with pika, so none of it shares
  code with the product under test).
- The archive, seen from outside: row counts through a connection of the test's own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlsplit

import pika
import requests

from app.store.db import make_database
from config import topology

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postroom_env(
    amqp_url: str,
    database_url: str,
    var_dir: str | Path,
    secret_key: str = "test-secret-key",
    **extra: str,
) -> dict[str, str]:
    """Return the environment of a Postroom process: this one's, plus the ``POSTROOM_*`` it needs.

    ``extra`` adds or overrides variables (``POSTROOM_FAILPOINTS="after_commit"``, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTROOM_", "GUNICORN_"))}
    env.update(
        POSTROOM_AMQP_URL=amqp_url,
        POSTROOM_DATABASE_URL=database_url,
        POSTROOM_VAR_DIR=str(var_dir),
        POSTROOM_SECRET_KEYS=secret_key,
        POSTROOM_PASSWORD_TIME_COST="1",
        POSTROOM_PASSWORD_MEMORY_KIB="64",
        POSTROOM_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Process:
    """A Postroom process started by a test, with its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """Return whether the process still runs."""
        return self.popen.poll() is None

    def log(self) -> str:
        """Return everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        """Return the end of the log, for failure messages."""
        kept = [line for line in self.log().splitlines() if not line.startswith("access pid=")]
        return f"--- {self.name} (pid {self.pid}, exit {self.popen.poll()}) {self.log_path} ---\n" + "\n".join(
            kept[-lines:]
        )

    def wait_for_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        """Wait until the log holds ``text`` ``count`` times; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if not self.alive():
                raise AssertionError(f"{self.name} exited before logging {text!r}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {text!r} within {timeout} s\n{self.tail()}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit by itself; return its exit code, or fail with the log."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs after {timeout} s\n{self.tail()}") from None

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM this process (only it) and wait; return the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL this process if it still runs (teardown of a failed test)."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to this process only (by its pid), if it still runs; do not wait."""
        if self.alive():
            self.popen.send_signal(signum)


class Worker(Process):
    """``python -m workers mail``."""

    READY = "Consumer: consuming"  # each consumer logs "<Kind>Consumer: consuming <queue>"

    def stats(self, name: str = "mail") -> dict[str, int]:
        """Return the stats worker ``name`` logs when it stops (``worker mail stopped: {...}``)."""
        for line in reversed(self.log().splitlines()):
            if f"worker {name} stopped: {{" in line:
                return json.loads(line.split("stopped: ", 1)[1].replace("'", '"'))
        raise AssertionError(f"{self.name} logged no stats for {name}\n{self.tail()}")


class Gunicorn(Process):
    """``gunicorn 'app:create_app()'`` on a free port; ``url`` is its base URL."""

    url: str = ""

    def worker_pids(self) -> set[int]:
        """Return the pids of the gunicorn worker processes (children of the master)."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except FileNotFoundError:
            return set()
        return {int(pid) for pid in children}

    def access_log_pids(self, path_prefix: str = "") -> set[int]:
        """Return the pids that served requests (from the access log format ``pid=%(p)s``)."""
        pids = set()
        for line in self.log().splitlines():
            if line.startswith("access pid=") and path_prefix in line:
                pids.add(int(line.split()[1].removeprefix("pid=<").removesuffix(">")))
        return pids


class Processes:
    """Every process a test started; :meth:`stop_all` ends those still running."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Process] = []

    def _spawn(self, cls: type[Process], name: str, argv: list[str], env: Mapping[str, str]) -> Any:
        index = sum(1 for p in self.started if p.name.split("#")[0] == name)
        label = f"{name}#{index}"
        log_path = self.log_dir / f"{label.replace('#', '-')}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                argv, cwd=REPO, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        process = cls(label, popen, log_path)
        self.started.append(process)
        return process

    def worker(self, env: Mapping[str, str], wait_ready: bool = True, names: tuple[str, ...] = ("mail",)) -> Worker:
        """Start ``python -m workers NAMES`` (the mail archive worker by default); by default
        wait until each of its consumers consumes."""
        worker = self._spawn(Worker, "worker", [PYTHON, "-m", "workers", *names], env)
        if wait_ready:
            worker.wait_for_log(Worker.READY, timeout=30, count=len(names))
        return worker

    def gunicorn(self, env: Mapping[str, str], workers: int = 3, threads: int = 8, preload: bool = True,
                 port: int | None = None, reuse_port: bool = False) -> Gunicorn:
        """Start the API under gunicorn (config/gunicorn.py) and wait until /healthz answers.

        ``port``: bind this port (default: a free one), e.g. the port of a gunicorn being
        stopped; ``reuse_port`` (SO_REUSEPORT) lets the new one bind while the old one's
        workers still hold the listening socket."""
        port = port or free_port()
        argv = [
            PYTHON, "-m", "gunicorn", "-c", "config/gunicorn.py",
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads),
            "--access-logfile", "-", "--access-logformat", "access pid=%(p)s %(m)s %(U)s %(s)s",
        ]
        if preload:
            argv.append("--preload")
        if reuse_port:
            argv.append("--reuse-port")
        argv.append("app:create_app()")
        env = {**env, "PORT": str(port), "POSTROOM_PRELOAD": "1" if preload else "0"}
        server = self._spawn(Gunicorn, "gunicorn", argv, env)
        server.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if not server.alive() or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not answer /healthz\n{server.tail()}")
            time.sleep(0.1)
        # Every worker has booted (each logs "Booting worker with pid").
        server.wait_for_log("Booting worker", count=workers, timeout=30)
        return server

    def tails(self) -> str:
        """Return the log tails of every process, for failure messages."""
        return "\n".join(p.tail() for p in self.started)

    def stop_all(self) -> None:
        """SIGTERM, then SIGKILL, every process started here that still runs."""
        for process in self.started:
            if process.alive():
                process.popen.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.popen.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


# -- the test broker, through pika ------------------------------------------------------------


def amqp(url: str) -> pika.BlockingConnection:
    """Open a pika connection to the test broker."""
    return pika.BlockingConnection(pika.URLParameters(url))


def queue_depth(url: str, queue: str) -> int:
    """Return the number of ready messages in ``queue`` (0 if it does not exist)."""
    connection = amqp(url)
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def queue_consumers(url: str, queue: str) -> int:
    """Return the number of consumers of ``queue`` (0 if it does not exist)."""
    connection = amqp(url)
    try:
        return connection.channel().queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def queue_exists(url: str, queue: str) -> bool:
    """Return whether ``queue`` is declared on the broker."""
    connection = amqp(url)
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def purge_queues(url: str) -> None:
    """Empty Postroom's queues so that no test sees another's leftovers."""
    connection = amqp(url)
    try:
        for spec in topology.QUEUES:
            channel = connection.channel()
            try:
                channel.queue_purge(spec.name)
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet
    finally:
        connection.close()


def redeclare_topology(url: str) -> None:
    """Declare every exchange, queue and binding of ``config.topology`` again (idempotent)."""
    connection = amqp(url)
    try:
        channel = connection.channel()
        for spec in topology.EXCHANGES:
            channel.exchange_declare(spec.name, spec.type, durable=True)
        for spec in topology.QUEUES:
            channel.queue_declare(spec.name, durable=True, arguments=spec.arguments)
            for exchange, routing_key in spec.bindings:
                channel.queue_bind(spec.name, exchange, routing_key)
    finally:
        connection.close()


@dataclass
class Delivered:
    """A message taken off a queue with pika."""

    body: bytes
    properties: pika.BasicProperties

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


def drain(url: str, queue: str, settle: float = 0.5) -> list[Delivered]:
    """Take (and ack) every message now in ``queue``, waiting ``settle`` s for stragglers."""
    connection = amqp(url)
    taken: list[Delivered] = []
    try:
        channel = connection.channel()
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            taken.append(Delivered(body, properties))
            quiet_since = time.monotonic()
    finally:
        connection.close()
    return taken


def peek(url: str, queue: str) -> list[Delivered]:
    """Return every message now in ``queue`` and leave them there (taken unacked, handed
    back when the connection closes)."""
    connection = amqp(url)
    seen: list[Delivered] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            seen.append(Delivered(body, properties))
    except pika.exceptions.ChannelClosedByBroker:
        pass  # no such queue: nothing in it
    finally:
        connection.close()
    return seen


def publish_raw(
    url: str,
    bodies: Iterable[tuple[bytes, Mapping[str, Any]]],
    exchange: str = topology.MAIL_EXCHANGE,
    routing_key: str = topology.MAIL_ROUTING_KEY,
) -> int:
    """Publish ``(body, properties)`` pairs persistent, mandatory and confirmed; return the count.

    Properties are keyword arguments of ``pika.BasicProperties`` (``message_id``, ``type``...).
    ``user_id`` defaults to the URL's user, as Postroom's own publishers set it (the workers
    trust the body's sender only then); ``user_id=None`` leaves it out. An unroutable or
    refused message raises."""
    connection = amqp(url)
    user = unquote(urlsplit(url).username or "guest")
    count = 0
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body, properties in bodies:
            props = {"delivery_mode": 2, "content_type": "application/json", "user_id": user, **properties}
            channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(**props), mandatory=True)
            count += 1
    finally:
        connection.close()
    return count


def broker_connections(broker: Any) -> list[dict[str, Any]]:
    """Return the test broker's connections: ``name`` (peer addresses), ``connection_name``
    (the client's), ``timeout`` (negotiated heartbeat) and ``connected_at``."""
    result = broker.ctl(
        "list_connections", "name", "client_properties", "timeout", "connected_at", "--formatter", "json", "-q"
    )
    rows = json.loads(result.stdout or "[]")
    connections = []
    for row in rows:
        properties = row.get("client_properties") or []
        # client_properties comes as [[key, type, value], ...] or as a mapping.
        if isinstance(properties, dict):
            name = properties.get("connection_name")
        else:
            name = next((p[2] for p in properties if isinstance(p, list) and p and p[0] == "connection_name"), None)
        connections.append(
            {"name": row.get("name"), "connection_name": name, "timeout": row.get("timeout"),
             "connected_at": row.get("connected_at")}
        )
    return connections


# -- the archive, through a connection of the test's own --------------------------------------


def count_rows(database_url: str, table: str, where: str = "", params: tuple = ()) -> int:
    """Return ``SELECT count(*) FROM table [WHERE ...]`` on a fresh connection (closed after)."""
    database = make_database(database_url)
    try:
        sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return database.execute_sql(sql.replace("?", database.param), params).fetchone()[0]
    finally:
        database.close()


def archive_counts(database_url: str) -> tuple[int, int]:
    """Return (rows in ``message``, rows in ``mailbox_entry``)."""
    return count_rows(database_url, "message"), count_rows(database_url, "mailbox_entry")


def duplicate_ids(database_url: str) -> list[str]:
    """Return message ids that have more than one mailbox entry for the same owner and folder."""
    database = make_database(database_url)
    try:
        cursor = database.execute_sql(
            "SELECT message_id FROM mailbox_entry GROUP BY owner, folder, message_id HAVING count(*) > 1"
        )
        return [row[0] for row in cursor.fetchall()]
    finally:
        database.close()
