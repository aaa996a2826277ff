"""Postroom's side of the bench: accounts, request bodies, samplers, seeding, raw publishes
into Postroom's exchange, end-to-end latency and subscriber-id pull + ack loops."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import requests

from app import rules, wire
from app.store.db import make_database
from bench import loadgen
from bench.services import cpu_seconds, rss_kib
from config import topology

PASSWORD = "bench-password-1"
BODY_1K = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20)[:1024]
RECIPIENTS_10 = [f"rcpt{i:02d}" for i in range(10)]
GROUP = "benchgroup"
SUBSCRIBER_IDS = ("bench-sub-1", "bench-sub-2", "bench-sub-3")


# ------------------------------------------------------------------------------ accounts


class Accounts:
    """Users, tokens, a group with three subscriber ids, created through the API."""

    USERS = ("alice", "bob", "lat-sender", "lat-rcpt", "reader", "seeder", *RECIPIENTS_10)

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.tokens: dict[str, str] = {}

    def create_user(self, name: str) -> None:
        """Register ``name`` (if new) and log in."""
        r = requests.post(f"{self.base}/v1/users", json={"username": name, "password": PASSWORD}, timeout=30)
        if r.status_code not in (201, 409):
            raise RuntimeError(f"creating {name}: {r.status_code} {r.text}")
        r = requests.post(f"{self.base}/v1/tokens", json={"username": name, "password": PASSWORD}, timeout=30)
        r.raise_for_status()
        self.tokens[name] = r.json()["token"]

    def create(self) -> "Accounts":
        http = requests.Session()
        for name in self.USERS:
            self.create_user(name)
        auth = self.auth("alice")
        r = http.put(f"{self.base}/v1/groups/{GROUP}", json={"description": "bench", "visibility": "public"},
                     headers={"Authorization": auth}, timeout=30)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"creating the group: {r.status_code} {r.text}")
        for sid in SUBSCRIBER_IDS:
            r = http.put(f"{self.base}/v1/subscriptions/{sid}", json={"groups": [GROUP]},
                         headers={"Authorization": auth}, timeout=30)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"creating subscription {sid}: {r.status_code} {r.text}")
        return self

    def auth(self, name: str) -> str:
        return f"Bearer {self.tokens[name]}"


def mail_body(to: list[str], size: int = 1024) -> bytes:
    return json.dumps({"to": to, "subject": "bench", "body": BODY_1K[:size]}).encode()


def post_body(size: int = 1024) -> bytes:
    return json.dumps({"subject": "bench", "body": BODY_1K[:size]}).encode()


# ------------------------------------------------------------------------------ samplers


def count_rows(db_url: str, table: str) -> int:
    database = make_database(db_url)
    try:
        return database.execute_sql(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        database.close()


class Sampler:
    """Samples, every ``interval`` s in a thread: queue depths (ready, via the management
    API's per-queue endpoint with a fresh figure), archive row count, CPU and RSS of pids."""

    def __init__(self, broker: Any, queues: list[str], pids: dict[str, list[int]], db_url: str | None = None,
                 table: str = "message", interval: float = 1.0) -> None:
        self.broker, self.queues, self.pids, self.db_url, self.table = broker, queues, pids, db_url, table
        self.interval = interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _depths(self) -> dict[str, int]:
        try:
            return ready_counts(self.broker.url, self.queues)
        except Exception:
            return {queue: -1 for queue in self.queues}

    def sample(self) -> dict:
        s = {"t": time.time(), "depth": self._depths(),
             "cpu_s": {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()},
             "rss_kib": {name: [rss_kib(p) for p in pids] for name, pids in self.pids.items()}}
        if self.db_url:
            s["rows"] = count_rows(self.db_url, self.table)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.sample())


def cpu_share(samples: list[dict], start: float, end: float) -> dict[str, float]:
    """CPU cores used by each process group between two wall-clock times (from samples)."""
    inside = [s for s in samples if start <= s["t"] <= end]
    if len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    span = last["t"] - first["t"]
    return {name: round((last["cpu_s"][name] - first["cpu_s"][name]) / span, 2) for name in first["cpu_s"]}


def ready_counts(amqp_url: str, queues: list[str]) -> dict[str, int]:
    """Exact ready-message counts (passive declares; the management API's are sampled)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        return {q: channel.queue_declare(q, passive=True).method.message_count for q in queues}
    finally:
        connection.close()


def wait_drained(broker: Any, queue: str, db_url: str, table: str, expected: int | None, timeout: float) -> float:
    """Wait until ``queue`` has no ready message and ``table`` holds ``expected`` rows (or,
    when that is unknown or never reached, stopped growing for 2 s); return the seconds."""
    started = time.monotonic()
    last_rows, last_change = -1, time.monotonic()
    while time.monotonic() - started < timeout:
        rows = count_rows(db_url, table)
        if rows != last_rows:
            last_rows, last_change = rows, time.monotonic()
        if ready_counts(broker.url, [queue])[queue] == 0:
            if expected is not None and rows >= expected:
                return time.monotonic() - started
            if time.monotonic() - last_change > 2.0:
                return last_change - started
        time.sleep(0.1)
    raise TimeoutError(f"{queue} not drained into {table} after {timeout} s")


# --------------------------------------------------------------------------- raw publish


async def _publish_mails(amqp_url: str, count: int, sender: str, to: list[str], inflight: int) -> float:
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topology.MAIL_EXCHANGE)
    window = asyncio.Semaphore(inflight)
    user = "guest"

    async def one() -> None:
        try:
            mail = wire.Mail(rules.new_message_id(), sender, tuple(to), (), (), "bench", BODY_1K, None,
                             datetime.now(timezone.utc))
            await exchange.publish(
                aio_pika.Message(wire.encode_mail(mail), content_type="application/json", message_id=mail.id,
                                 type=wire.MAIL_TYPE, user_id=user, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=topology.MAIL_ROUTING_KEY, mandatory=True, timeout=30)
        finally:
            window.release()

    started = time.perf_counter()
    tasks = []
    for _ in range(count):
        await window.acquire()
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    await connection.close()
    return seconds


def publish_mails(amqp_url: str, count: int, sender: str = "alice", to: list[str] | None = None,
                  inflight: int = 1000) -> float:
    """Publish ``count`` valid 1 KiB mails straight into Postroom's mail exchange, as a
    service user would (confirmed, persistent); return the seconds it took."""
    return asyncio.run(_publish_mails(amqp_url, count, sender, to or ["bob"], inflight))


# ------------------------------------------------------------------------------- seeding


def seed_inbox(db_url: str, owner: str, sender: str, start_uid: int, count: int, body_size: int = 1024,
               chunk: int = 20000) -> float:
    """Append ``count`` archived mails from ``sender`` to ``owner``'s inbox (and ``sender``'s
    sent folder) with insert_many, in the archive's own tables and the shape the worker
    writes; uids continue from ``start_uid``. Return the seconds it took."""
    from app.store.models import Folder, MailboxEntry, Message
    from app.store.db import database_proxy

    database = make_database(db_url)
    database_proxy.initialize(database)
    body = BODY_1K[:body_size]
    to_list = json.dumps([owner])
    base = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=30)
    started = time.perf_counter()
    done = 0
    with database.connection_context():
        while done < count:
            n = min(chunk, count - done)
            messages, entries = [], []
            for i in range(n):
                uid = start_uid + done + i + 1
                mid = rules.new_message_id()
                sent_at = base + timedelta(milliseconds=uid)
                messages.append({"id": mid, "sender": sender, "to_list": to_list, "cc_list": "[]", "bcc_list": "[]",
                                 "subject": f"seed {uid}", "body": body, "in_reply_to": None, "thread_id": mid,
                                 "sent_at": sent_at, "archived_at": sent_at, "content_hash": "0" * 64})
                entries.append({"owner": owner, "folder": "inbox", "uid": uid, "message_id": mid, "read": False})
                entries.append({"owner": sender, "folder": "sent", "uid": uid, "message_id": mid, "read": True})
            with database.atomic():
                for i in range(0, n, 500):
                    Message.insert_many(messages[i:i + 500]).execute()
                for i in range(0, 2 * n, 500):
                    MailboxEntry.insert_many(entries[i:i + 500]).execute()
                last = start_uid + done + n
                for folder_owner, name in ((owner, "inbox"), (sender, "sent")):
                    (Folder.insert(owner=folder_owner, name=name, last_uid=last)
                     .on_conflict(conflict_target=[Folder.owner, Folder.name], update={Folder.last_uid: last})
                     .execute())
            done += n
    database.close()
    return time.perf_counter() - started


def settle_database(db_url: str) -> float:
    """After bulk seeding, do what the database would do by itself in a while: SQLite folds
    its WAL back into the file (a checkpoint), PostgreSQL's autovacuum analyzes the grown
    tables. Return the seconds it took."""
    started = time.perf_counter()
    database = make_database(db_url)
    try:
        if db_url.startswith("sqlite"):
            database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            database.execute_sql("ANALYZE message")
            database.execute_sql("ANALYZE mailbox_entry")
    finally:
        database.close()
    return round(time.perf_counter() - started, 2)


# ---------------------------------------------------------------------- end-to-end latency


def _poll_entries(db_url: str, owner: str, start_id: int, expected: Any, deadline: float, interval: float,
                  out: Any) -> None:
    """In its own process: poll the archive for ``owner``'s new inbox rows, as a reader sees
    them (committed), and report when each message id became visible (wall clock)."""
    database = make_database(db_url)
    seen: dict[str, float] = {}
    last = start_id
    sql = "SELECT id, message_id, owner, folder FROM mailbox_entry WHERE id > %s ORDER BY id".replace(
        "%s", database.param)
    while len(seen) < expected.value and time.time() < deadline:
        rows = database.execute_sql(sql, (last,)).fetchall()
        now = time.time()
        for row_id, message_id, row_owner, folder in rows:
            last = max(last, row_id)
            if row_owner == owner and folder == "inbox":
                seen[message_id] = now
        time.sleep(interval)
    database.close()
    out.send(seen)
    out.close()


def max_entry_id(db_url: str) -> int:
    database = make_database(db_url)
    try:
        return database.execute_sql("SELECT coalesce(max(id), 0) FROM mailbox_entry").fetchone()[0]
    finally:
        database.close()


def end_to_end(base_url: str, db_url: str, auth: str, recipient: str, rate: float, duration: float,
               poll_interval: float = 0.002) -> dict:
    """Send 1 KiB mails at a fixed ``rate`` (open loop) and measure, per mail, the time from
    the send call being due to its row being visible in the recipient's inbox."""
    host, port = base_url.split("//", 1)[1].split(":")
    total = int(rate * duration)
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    expected = ctx.Value("q", 2**62)  # set to the number accepted once sending is over
    poller = ctx.Process(target=_poll_entries,
                         args=(db_url, recipient, max_entry_id(db_url), expected, time.time() + duration + 60,
                               poll_interval, sender))
    poller.start()
    time.sleep(1.0)  # the poller is polling
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    samples = asyncio.run(loadgen.open_loop(host, int(port), "/v1/messages", headers, mail_body([recipient]),
                                            rate, duration))
    expected.value = sum(1 for s in samples if s.status == 202)
    seen = receiver.recv() if receiver.poll(duration + 90) else {}
    poller.join(10)
    accepted = [s for s in samples if s.status == 202]
    e2e = [(seen[s.message_id] - s.scheduled) * 1000 for s in accepted if s.message_id in seen]
    api = [(s.done - s.scheduled) * 1000 for s in accepted]
    lag = [(s.sent - s.scheduled) * 1000 for s in samples]  # the generator's own lateness
    p = loadgen.percentile
    return {
        "rate": rate, "duration_s": duration, "sent": len(samples), "accepted": len(accepted),
        "visible": len(e2e), "poll_interval_ms": poll_interval * 1000,
        "e2e_ms": {"p50": p(e2e, 50), "p90": p(e2e, 90), "p99": p(e2e, 99), "max": max(e2e, default=float("nan"))},
        "api_ms": {"p50": p(api, 50), "p90": p(api, 90), "p99": p(api, 99), "max": max(api, default=float("nan"))},
        "send_lag_ms": {"p50": p(lag, 50), "p99": p(lag, 99)},
    }


# --------------------------------------------------------------------- pull + ack consumers


async def _consumer(host: str, port: int, sid: str, auth: str, stop_at: float, counts: list[int],
                    latencies: list[float], batch: int) -> None:
    conn = await loadgen.Connection.open(host, port)
    headers = {"Authorization": auth}
    json_headers = {**headers, "Content-Type": "application/json"}
    empty = 0
    try:
        while time.time() < stop_at:
            t0 = time.time()
            status, payload = await conn.request("GET", f"/v1/subscriptions/{sid}/messages?max={batch}&wait=1",
                                                 headers)
            if status != 200:
                raise RuntimeError(f"pull: {status} {payload[:200]!r}")
            messages = json.loads(payload)["messages"]
            if not messages:
                empty += 1
                if empty >= 2:
                    break  # the queue is drained
                continue
            body = json.dumps({"ack_ids": [m["ack_id"] for m in messages]}).encode()
            status, payload = await conn.request("POST", f"/v1/subscriptions/{sid}/ack", json_headers, body)
            if status != 200:
                raise RuntimeError(f"ack: {status} {payload[:200]!r}")
            counts.append(len(json.loads(payload)["acked"]))
            latencies.append((time.time() - t0) * 1000)
    finally:
        conn.close()


def pull_ack(base_url: str, auth: str, sid: str, consumers: int, duration: float, batch: int = 100) -> dict:
    """Run ``consumers`` HTTP pull + ack loops on one subscriber id; return posts acked per second."""
    host, port = base_url.split("//", 1)[1].split(":")
    counts: list[int] = []
    latencies: list[float] = []

    async def main() -> float:
        started = time.time()
        await asyncio.gather(*(_consumer(host, int(port), sid, auth, started + duration, counts, latencies, batch)
                               for _ in range(consumers)))
        return time.time() - started

    seconds = asyncio.run(main())
    acked = sum(counts)
    p = loadgen.percentile
    return {"consumers": consumers, "batch": batch, "seconds": seconds, "acked": acked,
            "acked_per_s": acked / seconds if seconds else 0.0,
            "round_trip_ms": {"p50": p(latencies, 50), "p99": p(latencies, 99)}}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t
