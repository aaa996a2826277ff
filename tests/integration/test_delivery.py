"""The delivery contract, in process: API (Flask test client) → RabbitMQ → archive worker
(a thread) → database → API, under broker faults and at the edges of sizes and concurrency.

Cases (shared/cases/README.md): C1 worker recovery, C2 broker down → bounded 503, C3
unroutable is not a success, C4 persistent messages that survive a broker restart, C5
bodies around AMQP frame boundaries, C7 slow database vs heartbeats, C10 (an unforeseen
decoder error is a dead letter, not a redelivery loop), C11 archive queue deleted under the
worker, C15 one message id in flight twice. Subprocess versions: tests/faults/.
"""

from __future__ import annotations

import concurrent.futures
import socket
import sqlite3
import threading
import time
import uuid
from typing import Iterator

import pika
import pytest

from app import create_app, wire
from config import topology
from processes import (
    archive_counts,
    broker_connections,
    drain,
    duplicate_ids,
    free_port,
    publish_raw,
    queue_depth,
    queue_exists,
    redeclare_topology,
)
from support import WorkerThread, register, wait_until
from workers.mail import MailArchiveConsumer

pytestmark = pytest.mark.integration

#: The contract: a send that cannot be accepted answers 503 "within about 5 s".
PUBLISH_BOUND = 6.5
#: The contract: after the broker is back, sends and consumers work again "within ~15 s".
RECOVERY_BOUND = 15.0

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def timed_send(client, headers, **mail):
    """POST a mail; return (response, seconds it took)."""
    started = time.monotonic()
    response = client.post("/v1/messages", json=mail, headers=headers)
    return response, time.monotonic() - started


def assert_broker_unavailable(response) -> None:
    """The send was refused with the contract's 503 problem."""
    assert response.status_code == 503, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "broker_unavailable"
    assert response.headers.get("Retry-After")


def archived(client, headers, message_id, timeout=15.0):
    """Wait until the caller can read ``message_id``; return the mail."""
    response = wait_until(
        lambda: (r := client.get(f"/v1/messages/{message_id}", headers=headers)).status_code == 200 and r,
        timeout=timeout,
        what=f"message {message_id} archived",
    )
    return response.get_json()


@pytest.fixture
def started_broker(broker) -> Iterator:
    """The session broker, restarted (start_app) after the test whatever happened in it."""
    yield broker
    try:
        broker.wait_ready(timeout=1)
    except TimeoutError:
        broker.start_app()


# -- C2: broker unreachable ------------------------------------------------------------------


class SilentServer:
    """A TCP port that accepts connections and never says a word (a hung broker)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@sqlite_only
@pytest.mark.parametrize("fault", ["refused", "silent"])
def test_send_fails_fast_with_503_when_broker_unreachable(settings, fault, record_property):
    """C2: no broker at the URL (connection refused, or a peer that never answers): 503 in
    about 5 s, never a hung request; the next send fails at once; reads still work."""
    silent = SilentServer() if fault == "silent" else None
    port = silent.port if silent else free_port()
    application = create_app(settings.replace(amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/"))
    client = application.test_client()
    try:
        alice = register(client, "alice")
        register(client, "bob")
        first, first_seconds = timed_send(client, alice, to=["bob"], subject="s", body="b")
        second, second_seconds = timed_send(client, alice, to=["bob"], subject="s", body="b")
        record_property("first_503_seconds", round(first_seconds, 2))
        record_property("second_503_seconds", round(second_seconds, 2))
        print(f"C2 {fault}: first 503 after {first_seconds:.2f} s, second after {second_seconds:.2f} s")
        assert_broker_unavailable(first)
        assert_broker_unavailable(second)
        assert first_seconds < PUBLISH_BOUND and second_seconds < PUBLISH_BOUND
        # Known down for longer than a publish may wait: the second one does not wait again.
        assert second_seconds < 1.0
        # Endpoints that do not publish are not held hostage by the broker.
        assert client.get("/v1/me", headers=alice).status_code == 200
        assert client.get("/v1/mailbox/inbox", headers=alice).status_code == 200
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["checks"]["broker"] == "unreachable"
        if silent:
            assert silent.accepted, "the publisher never even tried the silent port"
    finally:
        application.extensions["postroom"].publisher.close()
        if silent:
            silent.close()


# -- C2 + C1: broker stopped and started under a running app and worker ----------------------


@sqlite_only
@pytest.mark.slow
@pytest.mark.reliability
def test_broker_stop_gives_fast_503_and_both_sides_recover_without_restart(
    client, people, worker, started_broker, record_property
):
    broker = started_broker
    alice, bob = people["alice"], people["bob"]
    before, _ = timed_send(client, alice, to=["bob"], subject="before", body="b")
    assert before.status_code == 202
    archived(client, bob, before.get_json()["id"])

    broker.stop_app()
    down_latencies = []
    for _ in range(3):
        response, seconds = timed_send(client, alice, to=["bob"], subject="down", body="b")
        down_latencies.append(round(seconds, 2))
        assert_broker_unavailable(response)
        assert seconds < PUBLISH_BOUND, f"a send took {seconds:.1f} s while the broker was down"
    assert client.get("/v1/me", headers=bob).status_code == 200
    assert client.get("/readyz").status_code == 503

    # Measured from the start_app call (it returns once AMQP answers): a stricter bound.
    restarted = time.monotonic()
    broker.start_app()
    answering = time.monotonic() - restarted
    attempts = 0
    while True:
        attempts += 1
        response, seconds = timed_send(client, alice, to=["bob"], subject="after", body="b")
        assert seconds < PUBLISH_BOUND, f"a send took {seconds:.1f} s while the broker came back"
        if response.status_code == 202:
            break
        assert_broker_unavailable(response)
        assert time.monotonic() - restarted < RECOVERY_BOUND, "the API did not recover within 15 s of start_app"
        time.sleep(0.25)
    recovery = time.monotonic() - restarted
    record_property("down_503_seconds", down_latencies)
    record_property("api_recovery_seconds", round(recovery, 2))
    print(f"broker down: 503 after {down_latencies} s; broker answered {answering:.1f} s after start_app, "
          f"API accepted again after {recovery:.1f} s ({attempts} attempts)")

    # C1: the worker's consumer is back too: mail published after the restart is archived.
    ids = [response.get_json()["id"]]
    for n in range(3):
        again, _ = timed_send(client, alice, to=["bob"], subject=f"after {n}", body="b")
        assert again.status_code == 202
        ids.append(again.get_json()["id"])
    for message_id in ids:
        archived(client, bob, message_id, timeout=RECOVERY_BOUND)
    worker_recovery = time.monotonic() - restarted
    record_property("worker_recovery_seconds", round(worker_recovery, 2))
    print(f"C1: mail sent after the restart archived {worker_recovery:.1f} s after start_app")
    assert worker.thread.is_alive()
    assert client.get("/readyz").status_code == 200
    # Nothing refused was archived after all; everything accepted was, once.
    assert archive_counts(client.application.config["POSTROOM"].database_url) == (5, 10)


# -- C3: unroutable ----------------------------------------------------------------------------


@sqlite_only
def test_unroutable_publish_is_503_not_202(client, people, broker):
    """C3: with the archive queue's binding gone, the broker returns the mandatory message:
    the API answers 503 and nothing reaches any queue; once bound again, sends succeed."""
    alice = people["alice"]
    assert timed_send(client, alice, to=["bob"], subject="s", body="warm-up")[0].status_code == 202
    depth = queue_depth(broker.url, topology.MAIL_ARCHIVE_QUEUE)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        connection.channel().queue_unbind(
            topology.MAIL_ARCHIVE_QUEUE, topology.MAIL_EXCHANGE, topology.MAIL_ROUTING_KEY
        )
        response, seconds = timed_send(client, alice, to=["bob"], subject="s", body="nowhere to go")
        assert_broker_unavailable(response)
        assert "unroutable" in response.get_json()["detail"]
        assert seconds < PUBLISH_BOUND
        assert queue_depth(broker.url, topology.MAIL_ARCHIVE_QUEUE) == depth
        assert queue_depth(broker.url, topology.MAIL_DEAD_QUEUE) == 0
    finally:
        connection.close()
        redeclare_topology(broker.url)
    assert timed_send(client, alice, to=["bob"], subject="s", body="routed")[0].status_code == 202
    assert queue_depth(broker.url, topology.MAIL_ARCHIVE_QUEUE) == depth + 1


# -- C4: persistent, and nothing accepted lost by a broker restart ---------------------------


@sqlite_only
def test_published_mail_is_persistent_json_with_its_id_and_type(client, people, broker):
    """C4: what the API publishes (no worker runs): persistent, JSON, message_id = id, typed."""
    response, _ = timed_send(client, people["alice"], to=["bob"], subject="s", body="persist me")
    assert response.status_code == 202
    message_id = response.get_json()["id"]
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = connection.channel()
        method, properties, body = channel.basic_get(topology.MAIL_ARCHIVE_QUEUE, auto_ack=False)
        assert method is not None, "the accepted mail is not in the archive queue"
        assert properties.delivery_mode == 2
        assert properties.content_type == "application/json"
        assert properties.message_id == message_id
        assert properties.type == wire.MAIL_TYPE
        mail = wire.decode_mail(body)
        assert mail.id == message_id and mail.body == "persist me"
        channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()


@sqlite_only
@pytest.mark.slow
@pytest.mark.reliability
def test_accepted_mail_survives_a_broker_restart(client, people, settings, started_broker, record_property):
    """C4: N mails accepted with no worker running; the broker restarts; a worker started
    afterwards archives all N, once each."""
    broker = started_broker
    alice, bob = people["alice"], people["bob"]
    ids = []
    for n in range(30):
        response, _ = timed_send(client, alice, to=["bob"], cc=["carol"], subject=f"n{n}", body=f"body {n}")
        assert response.status_code == 202
        ids.append(response.get_json()["id"])
    assert queue_depth(broker.url, topology.MAIL_ARCHIVE_QUEUE) == 30
    broker.stop_app()
    broker.start_app()
    assert queue_depth(broker.url, topology.MAIL_ARCHIVE_QUEUE) == 30, "the restart lost accepted mail"
    runner = WorkerThread(settings).start()
    try:
        wait_until(lambda: archive_counts(settings.database_url)[0] == 30, timeout=RECOVERY_BOUND,
                   what="30 mails archived after the broker restart")
        assert archive_counts(settings.database_url) == (30, 90)  # bob, carol, alice's sent
        assert duplicate_ids(settings.database_url) == []
        assert {m["id"] for m in client.get("/v1/mailbox/inbox?limit=200", headers=bob).get_json()["messages"]} == set(ids)
    finally:
        runner.stop()
    assert queue_depth(broker.url, topology.MAIL_ARCHIVE_QUEUE) == 0


# -- C5: sizes around AMQP frame boundaries --------------------------------------------------

#: frame_max is 131072 by default; a body frame carries at most 131072 - 8 = 131064 bytes.
FRAME_SIZES = (0, 1, 8191, 8192, 8193, 131063, 131064, 131072, 131073)
BODY_LIMIT = 256 * 1024


def ascii_text(size: int, seed: int) -> str:
    """Return ``size`` ASCII letters and digits (no JSON escaping), different per seed."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[(i * 7 + seed * 13 + i // 61) % len(alphabet)] for i in range(size))


@pytest.fixture
def wire_sizes(app) -> dict[str, int]:
    """Record the size of every AMQP body the app publishes, by message id."""
    publisher = app.extensions["postroom"].publisher
    sizes: dict[str, int] = {}
    original = publisher.publish

    def recording(message):
        sizes[message.message_id] = len(message.body)
        return original(message)

    publisher.publish = recording
    yield sizes
    publisher.publish = original


def wire_overhead(sender: str, to: list[str], subject: str) -> int:
    """Return the wire body's size without the mail body (a UUID id; sent_at is fixed width)."""
    mail = wire.Mail(str(uuid.uuid4()), sender, tuple(to), (), (), subject, "", None)
    return len(wire.encode_mail(mail))


def test_bodies_around_frame_boundaries_round_trip_byte_exactly(client, people, worker, wire_sizes):
    """C5: mail bodies of each size, and AMQP message bodies of each size (the wire
    document padded to exactly that many bytes), survive API → broker → worker → DB → API."""
    alice, bob = people["alice"], people["bob"]
    overhead = wire_overhead("alice", ["bob"], "size")
    wanted: dict[str, tuple[str, int | None]] = {}  # id -> (body, exact wire size or None)
    bodies = [(size, None) for size in (*FRAME_SIZES, BODY_LIMIT)]
    bodies += [(size - overhead, size) for size in FRAME_SIZES if size > overhead]
    for index, (body_size, wire_size) in enumerate(bodies):
        message_id = str(uuid.uuid4())
        body = ascii_text(body_size, index)
        response = client.put(f"/v1/messages/{message_id}", json={"to": ["bob"], "subject": "size", "body": body},
                              headers=alice)
        assert response.status_code == 202, (body_size, response.get_json())
        wanted[message_id] = (body, wire_size)
    for message_id, (body, wire_size) in wanted.items():
        if wire_size is not None:
            assert wire_sizes[message_id] == wire_size, "the padding did not hit the frame size"
        mail = archived(client, bob, message_id)
        assert len(mail["body"].encode()) == len(body.encode()), f"wire size {wire_size}, body {len(body)}"
        assert mail["body"] == body
        assert archived(client, alice, message_id)["body"] == body
    assert sorted(wire_sizes[i] for i, (_, w) in wanted.items() if w) == sorted(s for s in FRAME_SIZES if s > overhead)


def test_multibyte_utf8_bodies_at_the_limit_round_trip_and_one_byte_over_is_413(client, people, worker):
    """C5: the limit counts UTF-8 bytes: 2-, 3- and 4-byte characters up to exactly 256 KiB
    round-trip; one byte more is 413 however few characters it is; 1 MiB is 413."""
    alice, bob = people["alice"], people["bob"]
    at_limit = {
        "2-byte": "é" * (BODY_LIMIT // 2),
        "3-byte": "€" * (BODY_LIMIT // 3) + "a" * (BODY_LIMIT % 3),
        "4-byte": "🌍" * (BODY_LIMIT // 4),
        # 1 + 2 + 3 + 4 * 65534 + 2 bytes, with a newline and every width of character.
        "mixed": "aé€" + "🌍" * 65534 + "\nx",
    }
    ids = {}
    for name, body in at_limit.items():
        assert len(body.encode()) == BODY_LIMIT, name
        response = client.post("/v1/messages", json={"to": ["bob"], "subject": name, "body": body}, headers=alice)
        assert response.status_code == 202, (name, response.get_json())
        ids[name] = response.get_json()["id"]
    over = {
        "2-byte + 1": "é" * (BODY_LIMIT // 2) + "a",
        "3-byte, fewer characters than the limit": "€" * (BODY_LIMIT // 3 + 1),
        "4-byte + 1": "🌍" * (BODY_LIMIT // 4) + "x",
        "ascii + 1": "a" * (BODY_LIMIT + 1),
    }
    for name, body in over.items():
        response = client.post("/v1/messages", json={"to": ["bob"], "subject": name, "body": body}, headers=alice)
        assert response.status_code == 413, name
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "payload_too_large"
    huge = client.post("/v1/messages", json={"to": ["bob"], "subject": "1 MiB", "body": "a" * (1024 * 1024)},
                       headers=alice)
    assert huge.status_code == 413 and huge.get_json()["code"] == "payload_too_large"
    for name, message_id in ids.items():
        assert archived(client, bob, message_id)["body"] == at_limit[name], name


# -- C15: one message id in flight twice ------------------------------------------------------


def test_concurrent_identical_puts_of_one_id_all_resolve_and_archive_once(client, people, worker, settings,
                                                                         record_property):
    """C15: two identical PUT /v1/messages/{id} at the same moment, 50 times: every request
    answers (202) within the publish bound, and each id is archived once."""
    alice = people["alice"]
    pairs = 50

    def put(message_id: str, barrier: threading.Barrier) -> tuple[int, float]:
        barrier.wait(timeout=10)
        started = time.monotonic()
        response = client.put(f"/v1/messages/{message_id}",
                              json={"to": ["bob"], "subject": "twice", "body": message_id}, headers=alice)
        return response.status_code, time.monotonic() - started

    ids = [str(uuid.uuid4()) for _ in range(pairs)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = []
        for message_id in ids:
            barrier = threading.Barrier(2)
            futures += [pool.submit(put, message_id, barrier) for _ in range(2)]
        results = [f.result(timeout=60) for f in futures]
    slowest = max(seconds for _, seconds in results)
    record_property("slowest_put_seconds", round(slowest, 2))
    assert [status for status, _ in results] == [202] * (2 * pairs)
    assert slowest < PUBLISH_BOUND
    wait_until(lambda: archive_counts(settings.database_url)[0] == pairs, what=f"{pairs} mails archived")
    time.sleep(0.3)  # let any duplicate delivery reach the worker
    assert archive_counts(settings.database_url) == (pairs, 2 * pairs)
    assert duplicate_ids(settings.database_url) == []


# -- C11: the archive queue is deleted under the worker --------------------------------------


@sqlite_only
@pytest.mark.reliability
def test_worker_redeclares_a_deleted_queue_and_resumes(client, people, worker, broker):
    """C11: deleting the archive queue cancels the worker's consumer; the worker notices,
    declares the queue again and consumes mail sent afterwards, without exiting."""
    alice, bob = people["alice"], people["bob"]
    first = timed_send(client, alice, to=["bob"], subject="s", body="before")[0].get_json()["id"]
    archived(client, bob, first)
    sessions = worker.consumer.stats["sessions"]
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        connection.channel().queue_delete(topology.MAIL_ARCHIVE_QUEUE)
    finally:
        connection.close()
    try:
        wait_until(lambda: worker.consumer.stats["sessions"] > sessions, timeout=RECOVERY_BOUND,
                   what="the worker to start a new session after the cancel")
        wait_until(lambda: queue_exists(broker.url, topology.MAIL_ARCHIVE_QUEUE), timeout=RECOVERY_BOUND,
                   what="the archive queue declared again")
        # The queue is declared a moment before it is bound again: until then a send is
        # unroutable (503), and a client retries.
        refusals = []

        def accepted():
            response, _ = timed_send(client, alice, to=["bob"], subject="s", body="after")
            if response.status_code != 202:
                refusals.append((response.status_code, response.get_json().get("detail")))
            return response.status_code == 202 and response

        response = wait_until(accepted, timeout=RECOVERY_BOUND, interval=0.1, what="a send accepted again")
        print(f"C11: {len(refusals)} sends refused before the queue was bound again: {refusals}")
        assert all(status == 503 for status, _ in refusals), refusals
        archived(client, bob, response.get_json()["id"], timeout=RECOVERY_BOUND)
        assert worker.thread.is_alive()
    finally:
        redeclare_topology(broker.url)


# -- C10, the whole kind: a decoder that fails in a way nobody foresaw ----------------------


class ExplodingConsumer(MailArchiveConsumer):
    """Raises an unexpected (non-RuleError) exception for one particular body."""

    def decode(self, message):
        if message.body == b'{"explode": true}':
            raise ZeroDivisionError("a bug in the decoder")
        return super().decode(message)


@sqlite_only
def test_unexpected_decode_error_is_dead_lettered_not_a_redelivery_loop(client, people, settings, broker):
    """C10: an exception other than a rule violation while decoding one message dead-letters
    that message (reason ``undecodable``); it does not end the session, so the batch's other
    mail is archived once and nothing loops through redeliveries."""
    runner = WorkerThread(settings, ExplodingConsumer).start()
    try:
        before = client.post("/v1/messages", json={"to": ["bob"], "subject": "s", "body": "1"},
                             headers=people["alice"]).get_json()["id"]
        publish_raw(broker.url, [(b'{"explode": true}', {"message_id": "boom"})])
        after = client.post("/v1/messages", json={"to": ["bob"], "subject": "s", "body": "2"},
                            headers=people["alice"]).get_json()["id"]
        archived(client, people["bob"], before)
        archived(client, people["bob"], after)
        dead = drain(broker.url, topology.MAIL_DEAD_QUEUE)
        assert [(d.properties.message_id, d.headers[topology.HEADER_DEAD_REASON]) for d in dead] == \
            [("boom", "undecodable")]
        assert runner.consumer.stats["sessions"] == 1
    finally:
        runner.stop()


# -- C7: a database call longer than two heartbeat intervals ---------------------------------


@sqlite_only
@pytest.mark.slow
@pytest.mark.reliability
def test_slow_database_does_not_cost_the_worker_its_connection(client, people, settings, broker):
    """C7: heartbeat 2 s; the worker's write waits 6 s on an SQLite lock held by another
    connection. Blocking work runs off the event loop, so heartbeats flow: the same AMQP
    connection (same client port, one session) stays up and the mail is archived after."""
    heartbeat_settings = settings.replace(amqp_url=f"{broker.url}?heartbeat=2")
    runner = WorkerThread(heartbeat_settings).start()
    name = f"postroom-worker-{topology.MAIL_ARCHIVE_QUEUE}-"
    try:
        alice, bob = people["alice"], people["bob"]
        first = timed_send(client, alice, to=["bob"], subject="s", body="first")[0].get_json()["id"]
        archived(client, bob, first)
        before = [c for c in broker_connections(broker) if (c["connection_name"] or "").startswith(name)]
        assert len(before) == 1 and before[0]["timeout"] == 2, before

        path = settings.database_url.split(":///", 1)[1]
        locker = sqlite3.connect(path, isolation_level=None, timeout=10)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            response, _ = timed_send(client, alice, to=["bob"], subject="s", body="during the lock")
            assert response.status_code == 202
            slow_id = response.get_json()["id"]
            time.sleep(6)  # three heartbeat intervals; the broker drops a silent peer after two
            assert client.get(f"/v1/messages/{slow_id}", headers=bob).status_code == 404, \
                "the lock did not hold the worker's write back"
        finally:
            locker.execute("COMMIT")
            locker.close()
        archived(client, bob, slow_id)
        after = [c for c in broker_connections(broker) if (c["connection_name"] or "").startswith(name)]
        assert [c["name"] for c in after] == [c["name"] for c in before], "the worker's connection was replaced"
        assert runner.consumer.stats["sessions"] == 1
    finally:
        runner.stop()
