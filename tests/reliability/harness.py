"""The world of a reliability scenario (used by ``conftest.py`` and the scenarios).

- :class:`FaultBroker`: the reliability node as the session ``Broker`` sees it (ctl,
  stop_app, start_app, wait_ready), plus SIGKILL of its Erlang VM and a restart of the same
  node (name, ports, data directory) through its pytest-rabbitmq executor, alarms reset,
  its log, queue counts.
- :class:`Scenario`: processes (gunicorn, archive workers), users and tokens, the ledger and
  load, the faults and recovery times, and :meth:`Scenario.finish`: join the load, retry,
  drain, stop the workers gracefully, check, and record ``var/reliability/<scenario>.json``.
- :func:`sizes`: a scenario's parameters at the selected scale
  (``POSTROOM_RELIABILITY_SCALE``: ``ci`` by default, or ``full``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pika
import pytest
import requests

import ledger as ledger_module
from app.store.db import make_database
from config import topology
from ledger import Ledger, LoadGenerator, Report, check, process_evidence, retry_pass, wait_archived
from processes import REPO, Processes, peek, postroom_env, queue_consumers, queue_depth

SCALE = os.environ.get("POSTROOM_RELIABILITY_SCALE", "ci").strip().lower() or "ci"
if SCALE not in ("ci", "full"):
    raise pytest.UsageError(f"POSTROOM_RELIABILITY_SCALE={SCALE!r}: use 'ci' (default) or 'full'")
RESULTS = REPO / "var" / "reliability"
SECRET_KEY = "reliability-secret-key"
USERS = ("ann", "ben", "cat", "dan", "eve")
PASSWORD = "correct horse"
#: The contract: a send that cannot be accepted answers 503 "within about 5 s".
PUBLISH_BOUND = 6.5
#: The contract: after the broker is back, sends and consumers work again "within ~15 s".
RECOVERY_BOUND = 15.0
#: RabbitMQ's default disk_free_limit, restored after the disk alarm scenario.
DISK_FREE_LIMIT = "50MB"
MEMORY_WATERMARK = "0.4"


# -- the fault broker ------------------------------------------------------------------------


def _group_members(pgid: int) -> list[tuple[int, str]]:
    """Return (pid, command line) of every process in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, IndexError, ValueError):
            continue
    return members


class FaultBroker:
    """The reliability node (the session ``Broker`` it wraps does ctl/stop_app/start_app/
    wait_ready), plus SIGKILL and restart of its VM, alarms, and its log."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.proc = node.proc
        self.url = node.url
        self.kills = 0
        self.restarts = 0
        self.alarmed = False  # an alarm setting was changed: ensure_up puts it back

    def ctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl ARGS`` against the node."""
        return self.node.ctl(*args, check=check, timeout=timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until AMQP answers; TimeoutError otherwise."""
        self.node.wait_ready(timeout)

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: the VM stays up, AMQP stops answering."""
        self.node.stop_app()

    def start_app(self, timeout: float = 60) -> None:
        """``rabbitmqctl start_app``, then wait until AMQP answers."""
        self.node.start_app(timeout)

    def running(self) -> bool:
        """Return whether the node's VM runs."""
        return self.proc.process is not None and self.proc.process.poll() is None

    def _group(self) -> int:
        # mirakuru starts rabbitmq-server with setsid: its pid is the process group of the
        # shell script, beam.smp and their helpers (epmd daemonizes into a session of its own).
        return self.proc.process.pid

    def kill(self) -> int:
        """SIGKILL the node's Erlang VM (beam.smp) and what it leaves of its process group;
        return the VM's pid. epmd, shared with other nodes, is not touched."""
        pgid = self._group()
        beams = [pid for pid, cmdline in _group_members(pgid) if "beam" in cmdline]
        assert beams, f"no beam.smp in process group {pgid}: {_group_members(pgid)}"
        for pid in beams:
            os.kill(pid, signal.SIGKILL)
        try:
            self.proc.process.wait(15)
        except subprocess.TimeoutExpired:  # the shell may linger; the group kill below ends it
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.process.wait(15)
        self.proc._clear_process()  # noqa: SLF001 - lets the executor start a new process
        self.kills += 1
        return beams[0]

    def beam_pid(self) -> int | None:
        """Return the pid of the node's Erlang VM (None when it does not run)."""
        if not self.running():
            return None
        return next((pid for pid, cmdline in _group_members(self._group()) if "beam" in cmdline), None)

    def restart(self, timeout: float = 90) -> None:
        """Start the node again (same name, ports, data directory) and wait until AMQP answers."""
        self.proc.start()  # mirakuru: new rabbitmq-server process, waits for the AMQP port
        self.wait_ready(timeout)
        self.restarts += 1

    def shutdown(self) -> None:
        """Stop the node: SIGTERM to its process group only, then wait."""
        if not self.running():
            return
        pgid = self._group()
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.process.wait(10)
        self.proc._clear_process()  # noqa: SLF001

    def ensure_up(self) -> None:
        """Bring the node back to normal whatever a scenario left: VM running, app started,
        alarm settings back to the defaults."""
        if not self.running():
            self.restart()
        try:
            self.wait_ready(timeout=2)
        except TimeoutError:
            self.start_app()
        if self.alarmed:
            self.clear_alarm("memory")
            self.clear_alarm("disk")
            self.alarmed = False

    def set_alarm(self, kind: str) -> None:
        """Raise a resource alarm: ``memory`` (watermark 0) or ``disk`` (free-space limit 1 EB)."""
        self.alarmed = True
        if kind == "memory":
            self.ctl("set_vm_memory_high_watermark", "0")
        else:
            self.ctl("set_disk_free_limit", str(10 ** 18))

    def clear_alarm(self, kind: str) -> None:
        """Put the alarm's setting back to RabbitMQ's default (watermark 0.4, 50 MB free)."""
        if kind == "memory":
            self.ctl("set_vm_memory_high_watermark", MEMORY_WATERMARK)
        else:
            self.ctl("set_disk_free_limit", DISK_FREE_LIMIT)

    def node_log(self) -> str:
        """Return the node's log (all of it: it survives restarts)."""
        text = []
        for path in sorted(Path(self.node.log_dir).glob("*.log")):
            try:
                text.append(path.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(text)

    def consumers(self) -> int:
        """Return the number of consumers of the mail archive queue (0 while unreachable)."""
        try:
            return queue_consumers(self.url, topology.MAIL_ARCHIVE_QUEUE)
        except pika.exceptions.AMQPError:  # the broker is down: nobody consumes
            return 0

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Return messages (ready + unacked), unacked and consumers of Postroom's queues."""
        rows = json.loads(self.ctl("list_queues", "name", "messages", "messages_unacknowledged", "consumers",
                                   "--formatter", "json", "-q").stdout or "[]")
        return {row["name"]: {"messages": int(row.get("messages") or 0),
                              "unacked": int(row.get("messages_unacknowledged") or 0),
                              "consumers": int(row.get("consumers") or 0)} for row in rows}


# -- the scenario ----------------------------------------------------------------------------


def sizes(ci: dict[str, Any], full: dict[str, Any]) -> SimpleNamespace:
    """Return the scenario's parameters at the selected scale (``full`` overrides ``ci``)."""
    return SimpleNamespace(**(ci if SCALE == "ci" else {**ci, **full}))


@dataclass
class Scenario:
    """A scenario's processes, ledger, faults and result."""

    name: str
    broker: FaultBroker
    database: str  # "sqlite" or "postgres"
    database_url: str
    var_dir: Path
    processes: Processes
    log_dir: Path
    summaries: list
    api: Any = None
    workers: list = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    ledger: Ledger | None = None
    load: LoadGenerator | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)
    recovery: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    report: Report | None = None
    result: dict[str, Any] = field(default_factory=dict)
    dead_letters: list = field(default_factory=list)

    # -- setting up --------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """Return the environment of a Postroom process of this scenario."""
        return postroom_env(self.broker.url, self.database_url, self.var_dir, SECRET_KEY, **extra)

    def start(self, workers: int = 2, worker_env: dict[str, str] | None = None, **api_env: str) -> "Scenario":
        """Start gunicorn (3 × 8 threads, preload, SO_REUSEPORT), ``workers`` archive workers,
        and register the users."""
        self.api = self.processes.gunicorn(self.env(**api_env), workers=3, threads=8, preload=True, reuse_port=True)
        for _ in range(workers):
            self.workers.append(self.processes.worker(self.env(**(worker_env or {}))))
        for name in USERS:
            response = requests.post(f"{self.api.url}/v1/users", json={"username": name, "password": PASSWORD},
                                     timeout=30)
            assert response.status_code == 201, response.text
            response = requests.post(f"{self.api.url}/v1/tokens", json={"username": name, "password": PASSWORD},
                                     timeout=30)
            assert response.status_code == 201, response.text
            self.tokens[name] = response.json()["token"]
        self.ledger = Ledger(uuid.uuid4().hex[:10], USERS)
        return self

    def start_load(self, total: int, rate: float | None, threads: int = 16, timeout: float = 10.0,
                   burst: int = 1) -> LoadGenerator:
        """Start sending ``total`` mails in the background at about ``rate``/s."""
        self.load = LoadGenerator(self.api.url, self.tokens, self.ledger, threads=threads, rate=rate,
                                  timeout=timeout, burst=burst).start(total)
        return self.load

    def fault(self, kind: str, **info: Any) -> dict[str, Any]:
        """Record a fault (wall time, sends done so far); return the record to add to."""
        record = {"kind": kind, "at": round(time.time(), 3), "sends_done": self.load.done if self.load else 0,
                  "under_load": bool(self.load and self.load.done < self.load.total), **info}
        self.faults.append(record)
        return record

    def first_archived_after(self, moment: float) -> float | None:
        """Return when (wall time) the archive first stored a mail that was sent after ``moment``."""
        cutoff = datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        database = make_database(self.database_url)
        try:
            sql = "SELECT min(archived_at) FROM message WHERE sent_at >= ?".replace("?", database.param)
            value = database.execute_sql(sql, (cutoff,)).fetchone()[0]
        finally:
            database.close()
        return None if value is None else ledger_module.epoch(value)

    def wait_recovered(self, back: float, consumers: int = 2, timeout: float = 45, settle: float = 2.0,
                       **info: Any) -> dict[str, Any]:
        """After a fault that ended at ``back`` (wall time): wait until the API accepted a send
        again (a 202 answered after ``back``), the broker reports ``consumers`` consumers, and
        the archive stored a mail sent after ``back`` (consumers back, end to end: after a VM
        restart the broker's consumer count is not to be trusted at once, as a quorum queue
        recovers its consumers from its log until it notices their channels are gone); record
        the seconds each took, then let the system run normally for ``settle`` seconds. When
        the load has already ended, probe sends (ledger sends too) are made until both are seen."""
        record: dict[str, Any] = {"back": round(back, 3), "probe_sends": 0, **info}
        deadline = time.monotonic() + timeout
        session = requests.Session()
        while time.monotonic() < deadline:
            if "api_seconds" not in record and (first := self.ledger.first_ok_after(back)) is not None:
                record["api_seconds"] = round(first - back, 2)
            if ("api_seconds" not in record or "archive_seconds" not in record) and self.load.done >= self.load.total:
                # The load has ended (the fault took longer than planned): probe with sends of
                # our own, in the ledger like every other send.
                send = self.ledger.new_send()
                ledger_module.attempt(send, session, self.api.url,
                                      {"Authorization": f"Bearer {self.tokens[send.sender]}"}, timeout=10)
                record["probe_sends"] += 1
            if "consumers_seconds" not in record and self.broker.consumers() >= consumers:
                record["consumers_seconds"] = round(time.time() - back, 2)
            if "archive_seconds" not in record and (first := self.first_archived_after(back)) is not None:
                record["archive_seconds"] = round(first - back, 2)
            if {"api_seconds", "consumers_seconds", "archive_seconds"} <= record.keys():
                break
            time.sleep(0.1)
        session.close()
        for name in ("api_seconds", "consumers_seconds", "archive_seconds"):
            record.setdefault(name, None)
        self.recovery.append(record)
        time.sleep(settle)
        return record

    # -- finishing ---------------------------------------------------------------------------

    def finish(self, drain_timeout: float = 120, retry_timeout: float = 180) -> Report:
        """Let the load end, retry what was not accepted, wait until every accepted mail is
        archived and the archive queue is empty, stop the workers (SIGTERM, so they log their
        stats), check the archive against the ledger, and record the result."""
        self.load.join(timeout=1800)
        before_retry = {"ok": 0, "failed": 0, "indeterminate": 0}
        for send in self.ledger.sends:
            before_retry[send.first.outcome] += 1
        retry = retry_pass(self.ledger, self.api.url, self.tokens, deadline_seconds=retry_timeout)
        archive_seconds = self.wait_archived(drain_timeout)
        queues = self._wait_queue_empty(timeout=30)
        for worker in self.workers:
            if worker.alive():
                worker.terminate(timeout=30)
        self.report = self.check(retry)
        self._record(before_retry, archive_seconds, queues)
        return self.report

    def check(self, retry: dict[str, Any] | None = None) -> Report:
        """Compare the archive and the dead letters (left in their queue) with the ledger."""
        self.dead_letters = peek(self.broker.url, topology.MAIL_DEAD_QUEUE)
        return check(self.ledger, self.database_url, [d.body for d in self.dead_letters], retry)

    def wait_archived(self, timeout: float = 120) -> float:
        """Wait until every accepted mail is archived, or nothing more can come."""
        return wait_archived(
            self.ledger, self.database_url, timeout,
            queue_empty=lambda: queue_depth(self.broker.url, topology.MAIL_ARCHIVE_QUEUE) == 0)

    def _wait_queue_empty(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            counts = self.broker.queue_counts().get(topology.MAIL_ARCHIVE_QUEUE, {})
            if counts.get("messages", 1) == 0 or time.monotonic() > deadline:
                return counts
            time.sleep(0.5)

    def _latency(self) -> dict[str, float]:
        attempts = self.ledger.attempts()
        answered = sorted(a.seconds for a in attempts if a.status is not None)
        if not answered:
            return {}
        return {"p50": round(answered[len(answered) // 2], 3),
                "p99": round(answered[min(len(answered) - 1, int(len(answered) * 0.99))], 3),
                "max_answered": round(answered[-1], 3),
                "max_503": round(max((a.seconds for a in attempts if a.status == 503), default=0.0), 3)}

    def _record(self, before_retry: dict[str, int], archive_seconds: float, queues: dict[str, Any]) -> None:
        report = self.report
        for record in self.recovery:
            if record.get("api_seconds") is None:
                first = self.ledger.first_ok_after(record["back"])
                record["api_seconds"] = None if first is None else round(first - record["back"], 2)
                record["api_seconds_from"] = "retry pass" if first and first > self.load.finished_at else "load"
        node_log = self.broker.node_log()
        self.result = {
            "scenario": self.name,
            "scale": SCALE,
            "database": self.database,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "sends": report.counts["sends"],
            "faults_injected": len(self.faults),
            "faults": self.faults,
            "counts": report.counts,
            "before_retry": before_retry,
            "indeterminate_before_retry": before_retry["indeterminate"],
            "retry": report.retry,
            "recovery": self.recovery,
            "latency_seconds": self._latency(),
            "load_seconds": round(self.load.finished_at - self.load.started_at, 1),
            "archive_wait_seconds": archive_seconds,
            "archive_queue_at_end": queues,
            "wall_seconds": round(time.monotonic() - self.started, 1),
            "evidence": {
                **process_evidence(self.processes.started),
                "broker": {"kills": self.broker.kills, "restarts": self.broker.restarts,
                           "startups_in_node_log": node_log.count("Server startup complete"),
                           "memory_alarms_in_node_log": node_log.count("memory resource limit alarm set"),
                           "disk_alarms_in_node_log": node_log.count("disk resource limit alarm set")},
                "dead_letter_reasons": self.dead_letter_reasons(),
            },
            "notes": self.notes,
            "problems": {k: v[:20] for k, v in report.examples.items() if v} if report.problems() else {},
            "logs": str(self.log_dir),
        }
        self._write()
        self.ledger.dump(self.log_dir / "ledger.jsonl")
        c = report.counts
        recovery = ""
        api = [r["api_seconds"] for r in self.recovery if r.get("api_seconds") is not None]
        archive = [r["archive_seconds"] for r in self.recovery if r.get("archive_seconds") is not None]
        if api:
            recovery += f"; recovery: first 202 after max {max(api):.1f} s"
        if archive:
            recovery += f", archiving again after max {max(archive):.1f} s"
        line = (f"{self.name} [{SCALE}, {self.database}]: {c['sends']} sends, {len(self.faults)} faults; first "
                f"attempts ok {c['ok']} / failed {c['failed']} / indeterminate {c['indeterminate']}; retried "
                f"{c['retried']}; lost {c['lost']} dup {c['duplicated']} unexpected {c['unexpected']} corrupted "
                f"{c['corrupted']} dead {c['dead_lettered']}{recovery}; {self.result['wall_seconds']:.0f} s")
        self.summaries.append(line)
        print(line)

    def _write(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.result, indent=2, default=str)
        (RESULTS / f"{self.name}.json").write_text(text)
        (RESULTS / f"{self.name}.{SCALE}.json").write_text(text)

    def dead_letter_reasons(self) -> dict[str, int]:
        """Return how many dead letters each reason has: Postroom's own header, or the
        broker's ``x-first-death-reason`` (``delivery_limit``: too many deliveries)."""
        reasons: dict[str, int] = {}
        for letter in self.dead_letters:
            headers = letter.headers
            reason = headers.get(topology.HEADER_DEAD_REASON) or headers.get("x-first-death-reason") or "unknown"
            reason = reason.decode() if isinstance(reason, bytes) else str(reason)
            reasons[reason] = reasons.get(reason, 0) + 1
        return reasons

    def evidence(self) -> dict[str, Any]:
        """Return the evidence recorded by :meth:`finish` (process logs, broker)."""
        return self.result["evidence"]

    def note(self, **facts: Any) -> None:
        """Add facts to the recorded result (after :meth:`finish`) and write it again."""
        self.notes.update(facts)
        self._write()

    def assert_contract(self) -> None:
        """The ledger check: nothing lost, duplicated, unexpected, corrupted or dead-lettered;
        every send not accepted at first was accepted on a retry with its key. And every
        fault was injected while the load ran (else the scenario is mis-sized)."""
        report = self.report
        idle = [f for f in self.faults if not f["under_load"]]
        assert not idle, f"{self.name}: faults injected after the load had ended (resize the scenario): {idle}"
        assert not report.problems(), f"{self.name}: the archive does not match the ledger\n{report.explain()}"
        assert report.counts["archived"] == report.counts["sends"] - sum(
            1 for s in self.ledger.sends if s.acknowledged_id is None), report.counts
