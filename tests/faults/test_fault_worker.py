"""The archive worker as a real process (``python -m workers mail``) under faults: killed
between commit and ack, SIGTERM in the middle of a batch, poison messages, and two workers
writing one SQLite file.

Cases (shared/cases/README.md): C8, C9, C10, C12, and "ack only after commit" of the design.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import psycopg2
import pytest

from app import rules, wire
from config import topology
from processes import archive_counts, drain, duplicate_ids, publish_raw, queue_depth
from support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.reliability]


def wire_mail(sender: str = "alice", to: tuple[str, ...] = ("bob",), body: str = "b", **fields) -> wire.Mail:
    """Return a valid mail with a fresh id."""
    return wire.Mail(rules.new_message_id(), sender, tuple(to), subject="s", body=body, **fields)


def as_published(mail: wire.Mail) -> tuple[bytes, dict]:
    """Return the (body, properties) the API would publish for ``mail``."""
    return wire.encode_mail(mail), {"message_id": mail.id, "type": wire.MAIL_TYPE}


def test_worker_killed_between_commit_and_ack_does_not_duplicate(archive, api, people, processes):
    """Ack after commit: a worker that dies after committing a batch but before acking it
    leaves the messages on the queue; the next worker sees them as duplicates, so every mail
    is archived exactly once."""
    ids = []
    for n in range(20):
        response = api.post("/v1/messages", json={"to": ["bob"], "cc": ["carol"], "subject": f"{n}", "body": "b"},
                            headers=people["alice"])
        assert response.status_code == 202
        ids.append(response.get_json()["id"])
    crashing = processes.worker(archive.env(POSTROOM_FAILPOINTS="after_commit"), wait_ready=False)
    assert crashing.wait_exit(timeout=30) == 17, crashing.tail()
    assert "failpoint after_commit: exiting without ack" in crashing.log()
    committed, _ = archive_counts(archive.database_url)
    assert committed > 0, "the failing worker exited before it committed anything"
    # Nothing was acked: the broker requeued all 20 when the connection died.
    wait_until(lambda: queue_depth(archive.amqp_url, topology.MAIL_ARCHIVE_QUEUE) == 20,
               what="the unacked mails back on the queue")

    healthy = processes.worker(archive.env())
    wait_until(lambda: archive_counts(archive.database_url) == (20, 60), timeout=15,
               what="every mail archived by the second worker")
    wait_until(lambda: queue_depth(archive.amqp_url, topology.MAIL_ARCHIVE_QUEUE) == 0, what="queue drained")
    assert healthy.terminate() == 0
    stats = healthy.stats()
    assert stats["duplicate"] == committed and stats["stored"] == 20 - committed, stats
    assert archive_counts(archive.database_url) == (20, 60)
    assert duplicate_ids(archive.database_url) == []
    for message_id in ids:
        assert api.get(f"/v1/messages/{message_id}", headers=people["carol"]).status_code == 200
    assert queue_depth(archive.amqp_url, topology.MAIL_DEAD_QUEUE) == 0


def test_sigterm_mid_batch_exits_cleanly_and_loses_nothing(archive, people, processes, record_property):
    """C12: SIGTERM while a worker works through a backlog: it finishes the batch in hand,
    hands back what it prefetched, exits 0 in bounded time; a new worker archives the rest,
    every mail exactly once."""
    total = 1000
    mails = [wire_mail(to=("bob",), body=f"mail {n}") for n in range(total)]
    publish_raw(archive.amqp_url, (as_published(m) for m in mails))
    # Small batches: many commits, so the signal lands between and inside them.
    env = archive.env(POSTROOM_WORKER_BATCH_SIZE="20")
    first = processes.worker(env)
    wait_until(lambda: archive_counts(archive.database_url)[0] > 0, timeout=15, interval=0.01,
               what="the first batch committed")
    signalled = time.monotonic()
    assert first.terminate(timeout=30) == 0, first.tail()
    exit_seconds = time.monotonic() - signalled
    record_property("sigterm_exit_seconds", round(exit_seconds, 2))
    assert "stop requested" in first.log()
    stored, entries = archive_counts(archive.database_url)
    stats = first.stats()
    record_property("stored_before_sigterm", stored)
    assert stored < total, "the worker finished everything before the signal: nothing was mid-batch"
    assert stats["stored"] == stored and entries == 2 * stored, stats
    # What it did not commit, it did not ack: all of it is back on the queue.
    wait_until(lambda: queue_depth(archive.amqp_url, topology.MAIL_ARCHIVE_QUEUE) == total - stored,
               what=f"{total - stored} unarchived mails back on the queue")

    second = processes.worker(env)
    wait_until(lambda: archive_counts(archive.database_url)[0] == total, timeout=30,
               what="the second worker archived the rest")
    assert second.terminate() == 0
    assert archive_counts(archive.database_url) == (total, 2 * total)
    assert duplicate_ids(archive.database_url) == []
    assert queue_depth(archive.amqp_url, topology.MAIL_ARCHIVE_QUEUE) == 0
    assert queue_depth(archive.amqp_url, topology.MAIL_DEAD_QUEUE) == 0


def test_two_workers_on_one_sqlite_file_lose_nothing_and_dead_letter_nothing(archive, people, processes,
                                                                             record_property):
    """C8: two worker processes write one SQLite file under load (small batches, so their
    write transactions interleave): no "database is locked" reaches the dead-letter queue,
    nothing is lost, nothing is archived twice."""
    total = 2000
    names = ("alice", "bob", "carol", "dave")
    env = archive.env(POSTROOM_WORKER_BATCH_SIZE="10", POSTROOM_WORKER_PREFETCH="40")
    workers = [processes.worker(env), processes.worker(env)]
    mails = [
        wire_mail(sender=names[n % 4], to=(names[(n + 1) % 4], names[(n + 2) % 4]), body=f"load {n}")
        for n in range(total)
    ]
    started = time.monotonic()
    publish_raw(archive.amqp_url, (as_published(m) for m in mails))
    wait_until(lambda: archive_counts(archive.database_url)[0] == total, timeout=90, interval=0.2,
               what=f"{total} mails archived by two workers")
    record_property("archive_seconds", round(time.monotonic() - started, 1))
    for worker in workers:
        assert worker.terminate() == 0
    stats = [worker.stats() for worker in workers]
    record_property("worker_stats", stats)
    print("C8 stats:", stats)
    assert all(s["stored"] > 0 for s in stats), f"one worker did all the work, nothing was concurrent: {stats}"
    assert sum(s["stored"] for s in stats) == total and sum(s["dead"] for s in stats) == 0, stats
    assert archive_counts(archive.database_url) == (total, 3 * total)
    assert duplicate_ids(archive.database_url) == []
    dead = drain(archive.amqp_url, topology.MAIL_DEAD_QUEUE, settle=0.2)
    assert dead == [], [d.headers for d in dead[:5]]
    assert queue_depth(archive.amqp_url, topology.MAIL_ARCHIVE_QUEUE) == 0
    locked = sum(w.log().count("database is locked") for w in workers)
    record_property("database_locked_retries", locked)


# -- C10: poison messages ------------------------------------------------------------------


def poisons() -> list[tuple[str, bytes, dict, str]]:
    """Return (name, body, AMQP properties, expected dead-letter reason) of each poison."""
    conflict_id = rules.new_message_id()
    valid = json.loads(wire.encode_mail(wire_mail()))

    def document(**changes) -> bytes:
        doc = {**valid, "id": rules.new_message_id(), **changes}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def doc_id(body: bytes) -> str:
        return json.loads(body)["id"]

    cases = [
        ("empty body", b"", {}, "invalid_json"),
        ("invalid UTF-8", b'{"v":1,"kind":"mail","body":"\xff\xfe"}', {}, "invalid_encoding"),
        ("truncated JSON", wire.encode_mail(wire_mail())[:-7], {}, "invalid_json"),
        ("not an object", b'["v", 1]', {}, "invalid_schema"),
        ("wrong types", document(to="bob"), {}, "invalid_schema"),
        ("NUL character", document(subject="a\u0000b"), {}, "invalid_character"),
        ("lone surrogate", document(body="x").replace(b'"body":"x"', b'"body":"\\ud800"'), {}, "invalid_character"),
        ("deep nesting", b'{"v":1,"kind":"mail","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, "invalid_json"),
        ("huge whitespace", b" " * (2 * 1024 * 1024), {}, "invalid_json"),
        ("wrong schema version", document(v=2), {}, "unsupported_version"),
        ("255-byte message id", document(id="7" * 255), {"message_id": "7" * 255}, "invalid_message_id"),
        ("AMQP id differs from body id", document(), {"message_id": rules.new_message_id()}, "id_mismatch"),
        ("sent_at out of range", document(sent_at="9999-12-31T23:59:59-23:59"), {}, "invalid_schema"),
        ("body over the limit", document(body="x" * (256 * 1024 + 1)), {}, "payload_too_large"),
        ("unknown recipient", document(to=["bob", "nobody"]), {}, "unknown_recipient"),
        ("unknown sender", document(**{"from": "mallory"}), {}, "unknown_sender"),
        ("no user_id: the sender is not vouched for", document(), {"user_id": None}, "unverified_sender"),
        ("id conflict", document(id=conflict_id, body="other content"), {}, "id_conflict"),
    ]
    result = []
    for name, body, properties, reason in cases:
        try:
            message_id = properties.get("message_id") or doc_id(body)
        except (ValueError, KeyError, TypeError, RecursionError):
            message_id = f"poison-{len(result)}"
        result.append((name, body, {"message_id": message_id, "type": wire.MAIL_TYPE, **properties}, reason))
    # The good original that the conflicting one collides with, sent just before it.
    original = wire.Mail(conflict_id, "alice", ("bob",), subject="s", body="original",
                         sent_at=datetime.now(timezone.utc))
    result.insert(-1, ("(good) id-conflict original", *as_published(original), ""))
    return result


def test_poison_messages_are_dead_lettered_once_with_a_reason_and_the_worker_goes_on(
    archive, api, people, processes, record_property
):
    """C10: each message that can never be archived lands in postroom.mail.dead exactly once
    with x-postroom-dead-reason saying why, and its body intact; the good mail between them
    is archived; the worker keeps running and restarts no session."""
    worker = processes.worker(archive.env())
    cases = poisons()
    good = []
    batch = []
    for name, body, properties, reason in cases:
        batch.append((body, properties))
        if reason:  # a good mail after each poison
            mail = wire_mail(body=f"good after {name}")
            good.append(mail.id)
            batch.append(as_published(mail))
        else:
            good.append(properties["message_id"])
    publish_raw(archive.amqp_url, batch)
    expected = {p["message_id"]: (name, body, reason) for name, body, p, reason in cases if reason}

    wait_until(lambda: archive_counts(archive.database_url)[0] == len(good), timeout=15,
               what=f"{len(good)} good mails archived")
    wait_until(lambda: queue_depth(archive.amqp_url, topology.MAIL_DEAD_QUEUE) >= len(expected), timeout=15,
               what=f"{len(expected)} dead letters")
    # The worker is still up and consuming: mail through the API after all that is archived.
    after = api.post("/v1/messages", json={"to": ["bob"], "subject": "s", "body": "still there?"},
                     headers=people["alice"])
    assert after.status_code == 202
    wait_until(lambda: api.get(f"/v1/messages/{after.get_json()['id']}", headers=people["bob"]).status_code == 200,
               what="mail after the poisons archived")
    assert worker.alive(), worker.tail()

    dead = drain(archive.amqp_url, topology.MAIL_DEAD_QUEUE)
    got: dict[str, list] = {}
    for letter in dead:
        got.setdefault(letter.properties.message_id, []).append(letter)
    problems = []
    for message_id, (name, body, reason) in expected.items():
        letters = got.pop(message_id, [])
        if len(letters) != 1:
            problems.append(f"{name}: {len(letters)} dead letters, expected exactly one")
            continue
        headers = letters[0].headers
        actual = headers.get(topology.HEADER_DEAD_REASON)
        actual = actual.decode() if isinstance(actual, bytes) else actual
        if actual != reason:
            problems.append(f"{name}: reason {actual!r}, expected {reason!r} ({headers.get(topology.HEADER_DEAD_DETAIL)!r})")
        if letters[0].body != body:
            problems.append(f"{name}: the dead letter's body differs from what was published")
        if "x-death" in headers:
            problems.append(f"{name}: dead-lettered by the broker after redeliveries, not by the worker")
    problems += [f"unexpected dead letter {mid!r}: {[l.headers for l in letters]}" for mid, letters in got.items()]
    assert not problems, "\n".join(problems) + "\n" + worker.tail()

    assert worker.terminate() == 0
    stats = worker.stats()
    record_property("worker_stats", stats)
    assert stats["sessions"] == 1, f"a poison message broke the worker's session: {stats}"
    assert stats["dead"] == len(expected) and stats["stored"] == len(good) + 1, stats
    assert archive_counts(archive.database_url)[0] == len(good) + 1
    assert queue_depth(archive.amqp_url, topology.MAIL_ARCHIVE_QUEUE) == 0


# -- C9: the database drops the worker's connections -----------------------------------------


def terminate_backends(base_url: str, application_name: str) -> int:
    """Terminate the PostgreSQL backends of one application name (ours only); return how many."""
    conn = psycopg2.connect(base_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            )
            return cursor.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("archive", ["postgres"], indirect=True)
def test_worker_survives_its_postgres_connections_being_killed(archive, people, processes, postgres_url,
                                                               record_property):
    """C9 (without restarting the shared server): the worker's database connections are
    terminated again and again while it archives a backlog. Each failure is a transient
    error: retried on a fresh connection, never dead-lettered, never acked before a commit;
    every mail ends up archived exactly once."""
    total = 600
    application_name = f"postroom-c9-{archive.schema_name}"
    env = archive.env(POSTROOM_WORKER_BATCH_SIZE="20",
                      POSTROOM_DATABASE_URL=f"{archive.database_url}&application_name={application_name}")
    publish_raw(archive.amqp_url, (as_published(wire_mail(body=f"pg {n}")) for n in range(total)))
    worker = processes.worker(env)
    kills = 0
    deadline = time.monotonic() + 30
    while archive_counts(archive.database_url)[0] < total and kills < 8 and time.monotonic() < deadline:
        kills += terminate_backends(postgres_url, application_name)
        time.sleep(0.1)
    wait_until(lambda: archive_counts(archive.database_url)[0] == total, timeout=30, interval=0.1,
               what=f"{total} mails archived")
    assert worker.alive(), worker.tail()
    assert worker.terminate() == 0
    stats = worker.stats()
    record_property("backends_terminated", kills)
    record_property("worker_stats", stats)
    assert kills > 0, "no connection of the worker was ever terminated"
    assert stats["db_retries"] > 0, f"the worker never saw the database fail: {stats}"
    assert stats["dead"] == 0 and stats["stored"] + stats["duplicate"] >= total, stats
    assert archive_counts(archive.database_url) == (total, 2 * total)
    assert duplicate_ids(archive.database_url) == []
    assert queue_depth(archive.amqp_url, topology.MAIL_ARCHIVE_QUEUE) == 0
    assert queue_depth(archive.amqp_url, topology.MAIL_DEAD_QUEUE) == 0
