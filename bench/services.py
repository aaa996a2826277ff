"""The bench's own services: a private RabbitMQ node (with the management plugin), the
Postroom API under gunicorn, the workers, the baseline HTTP apps, and the database.

Everything is started here, by pid, and stopped here by that pid only. The system broker
(5672) and PostgreSQL (5432) are never touched: the node gets free ports, its own node
name, epmd, config, plugin list, data and log directories (as tests/conftest.py and
bin/ensure-rabbitmq do), and PostgreSQL runs use a schema of their own in the `test` db.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEBIAN_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tcp_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    """Return the resident set size of ``pid`` in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """Return user+system CPU seconds used by ``pid`` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def ensure_wrk() -> str:
    """Return the path of wrk, installing Debian's package when missing (root only)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("bench: wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("bench: installing wrk with apt-get", flush=True)
    if subprocess.call(["apt-get", "install", "-y", "--no-install-recommends", "wrk"], env=env,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL) != 0:
        subprocess.call(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        subprocess.check_call(["apt-get", "install", "-y", "--no-install-recommends", "wrk"], env=env,
                              stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: wrk still missing after apt-get install")
    return found


# ---------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A process the bench started (in its own process group), with its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def wait_for_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before logging {text!r}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not log {text!r} in {timeout} s\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM this process (by its pid only), then SIGKILL after ``timeout``."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def spawn(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path = REPO) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:  # a fresh log: wait_for_log must not see an old run
        popen = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return Proc(name, popen, log_path)


# ------------------------------------------------------------------------------- broker


@dataclass
class Broker:
    """A private RabbitMQ node with the management plugin, on free ports."""

    base: Path
    log_dir: Path
    port: int = 0
    mgmt_port: int = 0
    node: str = ""
    server: Proc | None = None
    epmd: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def mgmt_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}"

    def start(self, timeout: float = 90) -> "Broker":
        server = DEBIAN_RABBIT_BIN / "rabbitmq-server"
        if not os.access(server, os.X_OK):
            subprocess.check_call([str(REPO / "bin/ensure-rabbitmq"), "install"])
        if self.base.exists():
            shutil.rmtree(self.base)
        for sub in ("mnesia", "log", "home"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.port, self.mgmt_port = free_port(), free_port()
        epmd_port, dist_port = free_port(), free_port()
        self.node = f"postroom-bench-{os.getpid()}@localhost"
        (self.base / "rabbitmq.conf").write_text(
            "# Postroom bench broker (bench/services.py)\n"
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"management.tcp.port = {self.mgmt_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = warning\n"
            # The bench fills queues to 10^5 messages on purpose; never block publishers on disk.
            "disk_free_limit.absolute = 100MB\n"
        )
        (self.base / "rabbitmq-env.conf").write_text("# empty: ignore /etc/rabbitmq/rabbitmq-env.conf\n")
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RABBITMQ_") and k not in ("ERL_EPMD_PORT", "ERL_FLAGS", "ERL_EPMD_ADDRESS")}
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.base / "broker.pid"),
            RABBITMQ_DIST_PORT=str(dist_port),
            ERL_EPMD_PORT=str(epmd_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            HOME=str(self.base / "home"),
        )
        self.env = env
        epmd = shutil.which("epmd") or "epmd"
        self.epmd = subprocess.Popen([epmd, "-port", str(epmd_port), "-address", "127.0.0.1"], env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.server = spawn("rabbitmq", [str(server)], env, self.log_dir, cwd=self.base)
        deadline = time.monotonic() + timeout
        while not self._mgmt_ready():
            if not self.server.alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the bench broker did not start\n{self.server.tail()}")
            time.sleep(0.3)
        return self

    def _mgmt_ready(self) -> bool:
        if not tcp_answers(self.port):
            return False
        try:
            self.api("GET", "/api/overview")
            return True
        except Exception:
            return False

    def api(self, method: str, path: str, body: object = None, timeout: float = 10) -> object:
        """Call the management HTTP API as guest; return the decoded JSON (or None)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.mgmt_url + path, data=data, method=method)
        req.add_header("Authorization", "Basic " + b64encode(b"guest:guest").decode())
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def declare_quorum(self, name: str) -> None:
        self.api("PUT", f"/api/queues/%2F/{name}", {"durable": True, "arguments": {"x-queue-type": "quorum"}})

    def purge(self, name: str) -> None:
        try:
            self.api("DELETE", f"/api/queues/%2F/{name}/contents")
        except urllib.error.HTTPError:
            pass

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=30)
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait(10)


def queue_depth(amqp_url: str, queue: str) -> int:
    """Messages ready + unacked are not both visible to AMQP; this returns *ready* via a
    passive declare (exact, unlike the management API's sampled figures)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


# ------------------------------------------------------------------------------ database


def database_url(kind: str, work: Path, schema: str, name: str = "postroom.db") -> str:
    if kind == "sqlite":
        return f"sqlite:///{work / name}"
    return f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def reset_database(kind: str, url: str, work: Path, schema: str, name: str = "postroom.db") -> None:
    """Start from an empty database (SQLite file deleted; PostgreSQL schema dropped)."""
    if kind == "sqlite":
        remove_sqlite(work / name)
    else:
        import psycopg2

        conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            cur.execute(f'CREATE SCHEMA "{schema}"')
        conn.close()
    subprocess.check_call([PYTHON, "-c", "import sys; from app.cli import main; sys.exit(main())", "db", "upgrade"],
                          cwd=REPO,
                          env={**os.environ, "POSTROOM_DATABASE_URL": url}, stdout=subprocess.DEVNULL)


def drop_schema(schema: str) -> None:
    import psycopg2

    conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.close()


# ------------------------------------------------------------------------------ Postroom


def postroom_env(amqp_url: str, db_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTROOM_", "GUNICORN_"))}
    env.update(
        POSTROOM_AMQP_URL=amqp_url,
        POSTROOM_DATABASE_URL=db_url,
        POSTROOM_VAR_DIR=str(var_dir),
        POSTROOM_SECRET_KEYS="bench-secret-key",
        # Only account creation and log-in hash passwords; no measured request does.
        POSTROOM_PASSWORD_TIME_COST="1",
        POSTROOM_PASSWORD_MEMORY_KIB="64",
        POSTROOM_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Gunicorn:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid)

    def rss(self) -> dict[str, int]:
        workers = [rss_kib(p) for p in self.worker_pids()]
        return {"master_kib": rss_kib(self.proc.pid), "workers_kib": workers,
                "max_worker_kib": max(workers or [0]), "total_kib": rss_kib(self.proc.pid) + sum(workers)}


def start_gunicorn(name: str, app: str, env: Mapping[str, str], log_dir: Path,
                   workers: int | None = None, threads: int | None = None) -> Gunicorn:
    """Run ``app`` under config/gunicorn.py (the deployment's settings) on a free port."""
    port = free_port()
    argv = [PYTHON, "-m", "gunicorn", "-c", "config/gunicorn.py", "--bind", f"127.0.0.1:{port}"]
    if workers:
        argv += ["--workers", str(workers)]
    if threads:
        argv += ["--threads", str(threads)]
    argv.append(app)
    env = {**env, "PORT": str(port)}
    proc = spawn(name, argv, env, log_dir)
    deadline = time.monotonic() + 60
    expected = workers or int(env.get("POSTROOM_WEB_PROCESSES", os.cpu_count() + 1))
    while True:
        if tcp_answers(port) and len(children(proc.pid)) >= expected:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    resp.read()
                break
            except urllib.error.HTTPError:
                break  # the baseline apps have no /healthz: answering at all is enough
            except OSError:
                pass
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"{name} did not start\n{proc.tail()}")
        time.sleep(0.1)
    return Gunicorn(proc, port)


def wait_ready(url: str, timeout: float = 60) -> None:
    """Wait until Postroom's /readyz says every process is connected to the broker."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/readyz did not answer 200 in {timeout} s")
        time.sleep(0.2)


def start_workers(env: Mapping[str, str], log_dir: Path, names: tuple[str, ...] = ("mail", "posts", "leases"),
                  label: str = "workers") -> Proc:
    """``python -m workers mail posts leases`` (the Procfile's worker line)."""
    proc = spawn(label, [PYTHON, "-m", "workers", *names], {**env, "POSTROOM_LOG_LEVEL": "INFO"}, log_dir)
    for name in names:
        if name == "mail":
            proc.wait_for_log("MailArchiveConsumer: consuming", timeout=60)
        elif name == "posts":
            proc.wait_for_log("GroupPostConsumer: consuming", timeout=60)
    return proc
