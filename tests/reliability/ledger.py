"""A Jepsen-style ledger of sends, the load generator that fills it, and the checker.

- :class:`LoadGenerator`: threads that send mail over real HTTP (``POST /v1/messages``),
  each send with a unique ``Idempotency-Key`` and a body that encodes that key (and a digest
  of it), so the archive can be compared with what was sent. Every attempt goes into the
  :class:`Ledger` with its outcome:

  - ``ok``: 202, with the message id the API returned;
  - ``failed``: a 4xx, or a 503 that says nothing was sent (broker known to be unreachable or
    not confirming, database unavailable, message returned unroutable or nacked), or a refused
    TCP connection;
  - ``indeterminate``: the client cannot know: timeout, connection reset or closed mid-request,
    any other 5xx, or a 503 after the message may have reached the broker (no confirm in time,
    connection lost while waiting for it).

- :func:`retry_pass`: after the faults stop, every send that did not end ``ok`` (except 4xx)
  is sent again, same key and same request, until it is accepted.

- :func:`check`: reads the archive (``message`` and ``mailbox_entry`` rows) and the mail
  dead-letter queue, and compares them with the ledger: lost (acknowledged, not archived or a
  mailbox copy missing), duplicated (archived twice, or a copy twice), unexpected (archived
  but never acknowledged), corrupted (id, sender, recipients, subject or body differ), plus
  which attempt the stored copy came from (its ``sent_at`` lies inside one attempt).

- :func:`process_evidence`: what the processes' logs say happened (publisher reconnects,
  503s served, worker sessions, retries, redeliveries seen as duplicates, exit codes), to
  prove that the fault path really ran.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

import requests
import urllib3

from app.store.db import make_database

OK, FAILED, INDETERMINATE = "ok", "failed", "indeterminate"
BODY_PREFIX = "ledger:"
#: A 503 with one of these in its detail was refused before anything reached a queue.
NOTHING_SENT_503 = ("unreachable", "unroutable", "nack", "nothing was sent")
#: Characters of several UTF-8 widths for the body filler: a re-encoding or a cut shows.
FILLER = "aé€🌍 z"


# -- what is sent -------------------------------------------------------------------------


def body_for(key: str) -> str:
    """Return the mail body of the send with ``key``: the key, its digest, and a filler of a
    length derived from the digest (0 to ~4 KB, multibyte characters included)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    length = int(digest[:4], 16) % 1200
    filler = (FILLER * (length // len(FILLER) + 1))[:length]
    return f"{BODY_PREFIX}{key}|{digest[:32]}|{filler}"


def key_of(body: str) -> str | None:
    """Return the key a body encodes, or None when it is not a ledger body."""
    if not body.startswith(BODY_PREFIX) or "|" not in body:
        return None
    return body[len(BODY_PREFIX):].split("|", 1)[0]


@dataclass
class Attempt:
    """One HTTP request of a send."""

    started: float  # wall clock (time.time()), comparable with the archive's sent_at
    ended: float
    outcome: str  # OK, FAILED or INDETERMINATE
    status: int | None  # HTTP status, None when no response came
    detail: str  # problem code/detail, or the exception
    message_id: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Send:
    """One mail the load generator sends, and every attempt at it."""

    n: int
    key: str
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str
    body: str
    attempts: list[Attempt] = field(default_factory=list)

    def request(self) -> dict[str, Any]:
        """Return the JSON of ``POST /v1/messages``."""
        return {"to": list(self.to), "cc": list(self.cc), "bcc": list(self.bcc), "subject": self.subject,
                "body": self.body}

    @property
    def first(self) -> Attempt:
        return self.attempts[0]

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]

    @property
    def acknowledged_id(self) -> str | None:
        """Return the id of the first 202 (every 202 of one key must carry the same id)."""
        return next((a.message_id for a in self.attempts if a.outcome == OK), None)

    def recipients(self) -> set[str]:
        return set(self.to) | set(self.cc) | set(self.bcc)


class Ledger:
    """Every send of a scenario; sends are made from ``usernames`` to each other."""

    def __init__(self, run_id: str, usernames: Sequence[str]) -> None:
        assert len(usernames) >= 4, "four users at least: sender, to, cc and bcc all differ"
        self.run_id = run_id
        self.usernames = list(usernames)
        self.sends: list[Send] = []
        self._lock = threading.Lock()

    def new_send(self) -> Send:
        """Create the next send (deterministic recipients, a unique key)."""
        with self._lock:
            n = len(self.sends)
            users = self.usernames
            u = len(users)
            send = Send(
                n=n,
                key=f"{self.run_id}-{n:06d}",
                sender=users[n % u],
                to=(users[(n + 1) % u],),
                cc=(users[(n + 2) % u],) if n % 3 == 0 else (),
                bcc=(users[(n + 3) % u],) if n % 5 == 0 else (),
                subject=f"ledger {self.run_id} #{n}",
                body="",
            )
            send.body = body_for(send.key)
            self.sends.append(send)
            return send

    def attempts(self) -> list[Attempt]:
        """Return every attempt of every send."""
        return [a for s in self.sends for a in s.attempts]

    def first_ok_after(self, moment: float) -> float | None:
        """Return the wall time of the first 202 answered after ``moment`` (None: none)."""
        times = [a.ended for a in self.attempts() if a.outcome == OK and a.ended >= moment]
        return min(times) if times else None

    def dump(self, path: Any) -> None:
        """Write the ledger as JSON lines (one send per line) for a post-mortem."""
        with open(path, "w") as out:
            for send in self.sends:
                record = asdict(send)
                record.pop("body")
                out.write(json.dumps(record) + "\n")


def classify(response: requests.Response | None, error: BaseException | None) -> tuple[str, int | None, str, str | None]:
    """Return (outcome, status, detail, message id) of one request."""
    if error is not None:
        if isinstance(error, requests.exceptions.ConnectionError):
            reason = getattr(error.args[0] if error.args else None, "reason", None)
            if isinstance(reason, urllib3.exceptions.NewConnectionError) and "refused" in str(reason).lower():
                return FAILED, None, "connection refused", None  # no byte of the request was sent
        return INDETERMINATE, None, f"{type(error).__name__}: {str(error)[:200]}", None
    status = response.status_code
    try:
        document = response.json()
    except ValueError:
        document = {}
    if status == 202:
        return OK, status, "accepted", document.get("id")
    detail = f"{document.get('code', '')}: {document.get('detail', response.text[:200])}"
    if status == 503:
        if document.get("code") == "database_unavailable" or any(t in detail for t in NOTHING_SENT_503):
            return FAILED, status, detail, None
        return INDETERMINATE, status, detail, None
    if 400 <= status < 500:
        return FAILED, status, detail, None
    return INDETERMINATE, status, detail, None


def attempt(send: Send, session: requests.Session, base_url: str, headers: dict[str, str],
            timeout: float) -> Attempt:
    """Make one request of ``send`` and record it."""
    started = time.time()
    response = error = None
    try:
        response = session.post(f"{base_url}/v1/messages", json=send.request(), timeout=timeout,
                                headers={**headers, "Idempotency-Key": send.key})
    except requests.RequestException as exc:
        error = exc
    outcome, status, detail, message_id = classify(response, error)
    record = Attempt(started, time.time(), outcome, status, detail, message_id)
    send.attempts.append(record)
    return record


def retryable(send: Send) -> bool:
    """Return whether ``send`` must be sent again: not accepted yet, and not refused as bad input."""
    if any(a.outcome == OK for a in send.attempts):
        return False
    last = send.last
    return not (last.status is not None and 400 <= last.status < 500 and last.status not in (408, 429))


# -- the load ------------------------------------------------------------------------------


class LoadGenerator:
    """``threads`` clients, each with its own keep-alive session, sending ``total`` mails at
    about ``rate`` per second in all (None: as fast as they can), ``burst`` at a time."""

    def __init__(self, base_url: str, tokens: dict[str, str], ledger: Ledger, threads: int = 16,
                 rate: float | None = None, timeout: float = 10.0, burst: int = 1) -> None:
        self.base_url = base_url
        self.headers = {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}
        self.ledger = ledger
        self.threads = threads
        self.rate = rate
        self.burst = max(1, burst)
        self.timeout = timeout
        self.total = 0
        self.issued = 0
        self.done = 0
        self.in_flight = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._pool: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self, total: int) -> "LoadGenerator":
        """Start sending ``total`` mails in the background."""
        self.total = total
        self.started_at = time.time()
        self._next_slot = time.monotonic()
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            thread.start()
            self._pool.append(thread)
        return self

    def _claim(self) -> bool:
        with self._lock:
            if self.issued >= self.total:
                return False
            self.issued += 1
            if self.rate:
                # Paced: ``burst`` sends per burst/rate s; a stall does not turn into a rush afterwards.
                now = time.monotonic()
                if self.issued % self.burst == 1 or self.burst == 1:
                    self._next_slot = max(self._next_slot + self.burst / self.rate, now - 0.2)
                wait = self._next_slot - now
            else:
                wait = 0.0
        if wait > 0:
            time.sleep(wait)
        return True

    def _run(self) -> None:
        session = requests.Session()
        try:
            while self._claim():
                send = self.ledger.new_send()
                with self._lock:
                    self.in_flight += 1
                try:
                    attempt(send, session, self.base_url, self.headers[send.sender], self.timeout)
                finally:
                    with self._lock:
                        self.in_flight -= 1
                        self.done += 1
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self._errors.append(exc)
        finally:
            session.close()

    def wait_done(self, count: int, timeout: float = 120) -> None:
        """Block until ``count`` sends have their first answer (or the load ended)."""
        deadline = time.monotonic() + timeout
        while self.done < min(count, self.total) and any(t.is_alive() for t in self._pool):
            if time.monotonic() > deadline:
                raise AssertionError(f"the load did not reach {count} sends in {timeout} s ({self.done} done)")
            time.sleep(0.05)

    def wait_in_flight(self, count: int, timeout: float = 30) -> int:
        """Block until at least ``count`` requests are in flight at once; return how many."""
        deadline = time.monotonic() + timeout
        while self.in_flight < count:
            if time.monotonic() > deadline or self.done >= self.total:
                raise AssertionError(f"never {count} requests in flight within {timeout} s")
            time.sleep(0.0005)
        return self.in_flight

    def wait_fraction(self, fraction: float, timeout: float = 120) -> None:
        """Block until ``fraction`` of the sends have their first answer."""
        self.wait_done(int(self.total * fraction), timeout)

    def join(self, timeout: float = 600) -> None:
        """Wait for every send's first attempt; re-raise a crash of a load thread."""
        deadline = time.monotonic() + timeout
        for thread in self._pool:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._pool), f"the load did not finish in {timeout} s"
        self.finished_at = time.time()
        if self._errors:
            raise self._errors[0]


def retry_pass(ledger: Ledger, base_url: str, tokens: dict[str, str], threads: int = 8,
               deadline_seconds: float = 120, timeout: float = 10.0) -> dict[str, Any]:
    """Send again, same key and request, every send that was not accepted (4xx excepted),
    round after round, until each is accepted or ``deadline_seconds`` pass."""
    headers = {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}
    local = threading.local()
    started = time.monotonic()
    rounds = 0
    retried: set[int] = set()

    def again(send: Send) -> Attempt:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        return attempt(send, session, base_url, headers[send.sender], timeout)

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="retry") as pool:
        while True:
            pending = [s for s in ledger.sends if retryable(s)]
            if not pending or time.monotonic() - started > deadline_seconds:
                break
            rounds += 1
            retried.update(s.n for s in pending)
            list(pool.map(again, pending))
            if any(retryable(s) for s in pending):
                time.sleep(min(2.0, 0.25 * rounds))
    return {"rounds": rounds, "retried": len(retried), "seconds": round(time.monotonic() - started, 2),
            "unresolved": sum(1 for s in ledger.sends if retryable(s))}


# -- the archive, and the check ------------------------------------------------------------


@dataclass
class Stored:
    """One archived ``message`` row."""

    id: str
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str
    body: str
    sent_at: float  # wall clock seconds


def epoch(value: Any) -> float:
    """Return a stored naive-UTC ``sent_at`` (datetime, or SQLite's text) as epoch seconds."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc).timestamp()


def read_archive(database_url: str) -> tuple[dict[str, Stored], Counter]:
    """Return the archived messages by id, and the number of mailbox copies per
    (message id, owner, folder)."""
    database = make_database(database_url)
    try:
        messages = {}
        cursor = database.execute_sql(
            "SELECT id, sender, to_list, cc_list, bcc_list, subject, body, sent_at FROM message")
        for row in cursor.fetchall():
            messages[row[0]] = Stored(row[0], row[1], tuple(json.loads(row[2])), tuple(json.loads(row[3])),
                                      tuple(json.loads(row[4])), row[5], row[6], epoch(row[7]))
        copies: Counter = Counter()
        cursor = database.execute_sql(
            "SELECT message_id, owner, folder, count(*) FROM mailbox_entry GROUP BY message_id, owner, folder")
        for message_id, owner, folder, count in cursor.fetchall():
            copies[(message_id, owner, folder)] = count
        return messages, copies
    finally:
        database.close()


def archived_ids(database_url: str) -> set[str]:
    """Return the ids in the ``message`` table."""
    database = make_database(database_url)
    try:
        return {row[0] for row in database.execute_sql("SELECT id FROM message").fetchall()}
    finally:
        database.close()


def wait_archived(ledger: Ledger, database_url: str, timeout: float,
                  queue_empty: Callable[[], bool] = lambda: False, settle: float = 3.0) -> float:
    """Wait until every acknowledged send is archived, or until nothing more can come (the
    queue is empty and the archive has not grown for ``settle`` s), or ``timeout``; return how
    long that took. The check afterwards says what is missing."""
    started = time.monotonic()
    wanted = {s.acknowledged_id for s in ledger.sends if s.acknowledged_id}
    last_count, stable_since = -1, time.monotonic()
    while time.monotonic() - started < timeout:
        archived = archived_ids(database_url)
        if wanted <= archived:
            break
        if len(archived) != last_count:
            last_count, stable_since = len(archived), time.monotonic()
        elif time.monotonic() - stable_since > settle and queue_empty():
            break
        time.sleep(0.25)
    return round(time.monotonic() - started, 2)


@dataclass
class Report:
    """What the checker found: ``counts`` (all the numbers) and ``examples`` (a few of each
    problem, for the failure message)."""

    counts: dict[str, int]
    examples: dict[str, list[str]]
    retry: dict[str, Any] = field(default_factory=dict)

    PROBLEMS = ("lost", "duplicated", "unexpected", "corrupted", "dead_lettered", "unresolved", "false_failures")

    def problems(self) -> dict[str, int]:
        """Return the non-zero problem counts."""
        return {name: self.counts[name] for name in self.PROBLEMS if self.counts.get(name)}

    def explain(self) -> str:
        """Return the problems with examples, for an assertion message."""
        lines = [f"{name}: {count}" for name, count in self.problems().items()]
        for name, examples in self.examples.items():
            if examples:
                lines.append(f"  e.g. {name}: " + "; ".join(examples[:5]))
        return "\n".join(lines)


def _attempt_of(send: Send, stored: Stored) -> Attempt | None:
    """Return the attempt whose request produced the stored copy (its sent_at lies inside)."""
    for candidate in send.attempts:
        if candidate.started - 0.05 <= stored.sent_at <= candidate.ended + 0.05:
            return candidate
    return None


def check(ledger: Ledger, database_url: str, dead_bodies: Iterable[bytes] = (),
          retry: dict[str, Any] | None = None) -> Report:
    """Compare the archive (and the dead letters) with the ledger."""
    messages, copies = read_archive(database_url)
    sends = {s.key: s for s in ledger.sends}
    examples: dict[str, list[str]] = {k: [] for k in
                                      ("lost", "duplicated", "unexpected", "corrupted", "dead_lettered",
                                       "missing_copies", "extra_copies", "false_failures", "unresolved")}
    counts = Counter()
    counts["sends"] = len(ledger.sends)
    for send in ledger.sends:
        counts[send.first.outcome] += 1
        if len(send.attempts) > 1:
            counts["retried"] += 1
        if send.acknowledged_id and send.first.outcome != OK:
            counts["retried_ok"] += 1
        if retryable(send):
            counts["unresolved"] += 1
            examples["unresolved"].append(f"{send.key} last {send.last.status} {send.last.detail}")

    by_key: dict[str, list[Stored]] = {}
    for stored in messages.values():
        key = key_of(stored.body)
        if key is None or key not in sends:
            # The archive is the scenario's own: every row must come from the ledger.
            counts["unexpected"] += 1
            counts["corrupted"] += key is None
            examples["unexpected"].append(f"{stored.id} body {stored.body[:60]!r}")
            continue
        by_key.setdefault(key, []).append(stored)

    dead_keys = Counter()
    for body in dead_bodies:
        try:
            document = json.loads(body)
            dead_keys[key_of(document.get("body", ""))] += 1
        except (ValueError, AttributeError):
            dead_keys[None] += 1
    for key, count in dead_keys.items():
        if key is None or key in sends:
            counts["dead_lettered"] += count
            examples["dead_lettered"].append(f"{key} x{count}")

    for key, send in sends.items():
        rows = by_key.get(key, [])
        acknowledged = send.acknowledged_id
        if not rows:
            if acknowledged:
                counts["lost"] += 1
                examples["lost"].append(f"{key} id {acknowledged} ({len(send.attempts)} attempts, "
                                        f"first {send.first.outcome} {send.first.status})")
            continue
        if len(rows) > 1:
            counts["duplicated"] += 1
            examples["duplicated"].append(f"{key} archived as {[r.id for r in rows]}")
        stored = rows[0]
        if acknowledged is None:
            counts["unexpected"] += 1
            examples["unexpected"].append(f"{key} archived as {stored.id} but never accepted "
                                          f"({[(a.status, a.detail) for a in send.attempts]})")
            continue
        problems = []
        if stored.id != acknowledged:
            problems.append(f"id {stored.id} != acknowledged {acknowledged}")
        if {a.message_id for a in send.attempts if a.outcome == OK} != {acknowledged}:
            problems.append(f"202s carried several ids {[a.message_id for a in send.attempts]}")
        for name in ("sender", "to", "cc", "bcc", "subject", "body"):
            if getattr(stored, name) != getattr(send, name):
                problems.append(f"{name} differs")
        if problems:
            counts["corrupted"] += 1
            examples["corrupted"].append(f"{key}: {', '.join(problems)}")
        expected = {(name, "inbox") for name in send.recipients()} | {(send.sender, "sent")}
        for owner, folder in expected:
            n = copies.get((stored.id, owner, folder), 0)
            if n == 0:
                counts["missing_copies"] += 1
                examples["missing_copies"].append(f"{key}: no {folder} copy for {owner}")
            elif n > 1:
                counts["extra_copies"] += 1
                examples["extra_copies"].append(f"{key}: {n} {folder} copies for {owner}")
        origin = _attempt_of(send, stored)
        if origin is not None and origin is not send.last:
            counts[f"stored_from_{origin.outcome}_attempt"] += 1
            if origin.outcome == FAILED:
                counts["false_failures"] += 1
                examples["false_failures"].append(f"{key}: answered {origin.status} {origin.detail!r} "
                                                  "yet that attempt's copy was archived")
    # Copies of archived ledger messages for owners that should not have one.
    ledger_ids = {rows[0].id: sends[key] for key, rows in by_key.items()}
    for (message_id, owner, folder), n in copies.items():
        send = ledger_ids.get(message_id)
        if send is None:
            continue
        allowed = send.recipients() if folder == "inbox" else {send.sender}
        if owner not in allowed:
            counts["extra_copies"] += n
            examples["extra_copies"].append(f"{send.key}: a {folder} copy for {owner}")
    # A missing copy is a loss and an extra copy a duplicate, whatever became of the message row.
    counts["lost"] += counts["missing_copies"]
    examples["lost"] += examples["missing_copies"]
    counts["duplicated"] += counts["extra_copies"]
    examples["duplicated"] += examples["extra_copies"]
    for name in ("sends", "ok", "failed", "indeterminate", "retried", "retried_ok", "lost", "duplicated",
                 "unexpected", "corrupted", "dead_lettered", "unresolved", "false_failures", "missing_copies",
                 "extra_copies"):
        counts.setdefault(name, 0)
    counts["archived"] = len(messages)
    return Report(dict(counts), examples, retry or {})


# -- evidence from the processes' logs -------------------------------------------------------


def _count(text: str, *needles: str) -> int:
    return sum(text.count(needle) for needle in needles)


def process_evidence(processes: Iterable[Any]) -> dict[str, Any]:
    """Summarise what each Postroom process logged: publisher reconnects and 503s served
    (gunicorn), sessions, reconnects, database retries, duplicates (redeliveries of committed
    mail), failpoints and exit codes (workers)."""
    api: dict[str, Any] = {"processes": 0, "exit_codes": [], "publisher_lost": 0, "publisher_reconnected": 0,
                           "responses": Counter(), "worker_timeouts": 0}
    workers: dict[str, Any] = {"processes": 0, "exit_codes": [], "stats": Counter(), "stopped_gracefully": 0,
                               "amqp_reconnects": 0, "sessions_ended": 0, "db_errors": 0, "failpoint_exits": 0}
    for process in processes:
        log = process.log()
        code = process.popen.poll()
        if process.name.startswith("gunicorn"):
            api["processes"] += 1
            api["exit_codes"].append(code)
            api["publisher_lost"] += _count(log, "lost the broker")
            api["publisher_reconnected"] += _count(log, "reconnected")
            api["worker_timeouts"] += _count(log, "WORKER TIMEOUT")
            for line in log.splitlines():
                if line.startswith("access pid=") and "/v1/messages" in line:
                    api["responses"][line.rsplit(" ", 1)[1]] += 1
        elif process.name.startswith("worker"):
            workers["processes"] += 1
            workers["exit_codes"].append(code)
            workers["amqp_reconnects"] += _count(log, "closed. Reconnecting after", "Connection attempt to")
            workers["sessions_ended"] += _count(log, "session ended", "session failed")
            workers["db_errors"] += _count(log, "database error, retrying")
            workers["failpoint_exits"] += _count(log, "failpoint after_commit")
            for line in log.splitlines():
                if "worker mail stopped: {" in line:
                    workers["stopped_gracefully"] += 1
                    workers["stats"].update(json.loads(line.split("stopped: ", 1)[1].replace("'", '"')))
    api["responses"] = dict(api["responses"])
    workers["stats"] = dict(workers["stats"])
    return {"api": api, "workers": workers}
