"""Subscriber ids (consumer groups) against the contract (shared/api-v1.md, "Subscriptions"
and "Precise rules"), with HTTP pull and AMQP consumers (pika and aio-pika) sharing one id.

In process: the Flask test client (one per consumer thread), the session's RabbitMQ, the
post archive worker (and, where said, the lease worker) in threads; SQLite and PostgreSQL.
Subscriber ids get a random suffix and their queues are deleted after the test: the
broker outlives the test, and its queues would otherwise carry posts into the next one.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import aio_pika
import pika
import pytest

from app import rules, wire
from config import topology
from processes import drain, publish_raw, queue_depth
from support import wait_until
from workers.leases import LeaseReaper

pytestmark = pytest.mark.integration

POST_FIELDS = {"seq", "id", "group", "topic", "from", "subject", "body", "sent_at", "in_reply_to"}


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def sids(broker) -> Iterator["SidMaker"]:
    """Make unique subscriber ids; delete their queues after the test."""
    maker = SidMaker()
    yield maker
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        for sid in maker.made:
            for name in (topology.subscription_queue(sid), topology.subscription_dead_queue(sid)):
                connection.channel().queue_delete(name)
    finally:
        connection.close()


class SidMaker:
    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, prefix: str) -> str:
        sid = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.made.append(sid)
        return sid


def put_group(client, who, name, **body):
    response = client.put(f"/v1/groups/{name}", json=body, headers=who)
    assert response.status_code == 201, response.get_json()


def join(client, who, group, username):
    response = client.put(f"/v1/groups/{group}/members/{username}", headers=who)
    assert response.status_code in (200, 201), response.get_json()


def post(client, who, group, body="hello", **fields):
    response = client.post(f"/v1/groups/{group}/messages", json={"body": body, **fields}, headers=who)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def subscribe(client, who, sid, groups, expect=201, **body):
    response = client.put(f"/v1/subscriptions/{sid}", json={"groups": groups, **body}, headers=who)
    assert response.status_code == expect, (response.status_code, response.get_json())
    return response.get_json()


def pull(client, who, sid, max=10, wait=0.0):
    response = client.get(f"/v1/subscriptions/{sid}/messages", query_string={"max": max, "wait": wait}, headers=who)
    assert response.status_code == 200, (response.status_code, response.get_json())
    return response.get_json()["messages"]


def pull_n(client, who, sid, n, timeout=15.0, max=100):
    """Pull until ``n`` posts were leased (no ack); fail after ``timeout``."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"{sid}: only {len(got)} of {n} posts in {timeout} s"
        got += pull(client, who, sid, max=min(max, n - len(got)), wait=1)
    return got


def ack(client, who, sid, ack_ids):
    response = client.post(f"/v1/subscriptions/{sid}/ack", json={"ack_ids": ack_ids}, headers=who)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def describe(client, who, sid):
    response = client.get(f"/v1/subscriptions/{sid}", headers=who)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def archived(client, who, group, n):
    wait_until(lambda: client.get(f"/v1/groups/{group}", headers=who).get_json()["high_seq"] >= n,
               what=f"{n} posts archived in {group}")


def problem(response, status, code=None):
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/problem+json"
    if code is not None:
        assert response.get_json()["code"] == code, response.get_json()


def amqp_delivery_count(headers: dict | None) -> int:
    """Which delivery to the subscriber id an AMQP message is (as docs/subscriptions.md says)."""
    headers = headers or {}
    return int(headers.get(topology.HEADER_DELIVERY_COUNT) or 0) + int(headers.get("x-delivery-count") or 0) + 1


@dataclass
class Received:
    consumer: str
    post: dict
    delivery_count: int
    headers: dict = field(default_factory=dict)
    properties: Any = None


class Consumers:
    """Consumers of one subscriber id, each in a thread, recording what they got."""

    def __init__(self, url: str, sid: str) -> None:
        self.url = url
        self.sid = sid
        self.queue = topology.subscription_queue(sid)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def _record(self, item: Received) -> None:
        with self.lock:
            self.received.append(item)

    def _thread(self, target, name) -> None:
        def run():
            try:
                target()
            except BaseException as exc:  # reported by check()
                self.errors.append(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def http(self, app, who, name="http", max=2, work=0.0) -> None:
        client = app.test_client()

        def run():
            while not self.stop.is_set():
                got = pull(client, who, self.sid, max=max, wait=0.5)
                for item in got:
                    self._record(Received(name, item, item["delivery_count"]))
                    time.sleep(work)
                if got:
                    result = ack(client, who, self.sid, [item["ack_id"] for item in got])
                    assert result["expired"] == [], result

        self._thread(run, name)

    def pika(self, name="pika", prefetch=1, work=0.0, ack=True) -> None:
        def run():
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = connection.channel()
            channel.basic_qos(prefetch_count=prefetch)
            for method, properties, body in channel.consume(self.queue, inactivity_timeout=0.1):
                if self.stop.is_set():
                    break
                if method is None:
                    continue
                headers = dict(properties.headers or {})
                self._record(Received(name, json.loads(body), amqp_delivery_count(headers), headers, properties))
                time.sleep(work)
                if ack:
                    channel.basic_ack(method.delivery_tag)
            connection.close()  # without ack: the broker hands unacked posts to another consumer

        self._thread(run, name)

    def aio_pika(self, name="aio-pika", prefetch=1, work=0.0) -> None:
        async def main():
            connection = await aio_pika.connect(self.url)
            async with connection:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=prefetch)
                queue = await channel.get_queue(self.queue, ensure=True)

                async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                    headers = dict(message.headers or {})
                    self._record(Received(name, json.loads(message.body), amqp_delivery_count(headers), headers,
                                          message))
                    await asyncio.sleep(work)
                    await message.ack()

                tag = await queue.consume(on_message)
                while not self.stop.is_set():
                    await asyncio.sleep(0.05)
                await queue.cancel(tag)

        self._thread(lambda: asyncio.run(main()), name)

    def ids(self) -> list[str]:
        with self.lock:
            return [r.post["id"] for r in self.received]

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        wait_until(lambda: self.check() or len(set(self.ids())) >= n, timeout=timeout,
                   what=f"{n} posts received by {self.sid}'s consumers")

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        self.check()


@pytest.fixture
def consumers(broker) -> Iterator:
    made: list[Consumers] = []

    def make(sid: str) -> Consumers:
        made.append(Consumers(broker.url, sid))
        return made[-1]

    yield make
    for group in made:
        group.stop.set()
        for thread in group.threads:
            thread.join(10)


@pytest.fixture
def lounge(client, people):
    """Group ``lounge`` (public, alice owns it, bob is a member)."""
    put_group(client, people["alice"], "lounge")
    join(client, people["bob"], "lounge", "bob")
    return "lounge"


# -- every subscriber id gets every post ----------------------------------------------------------


def test_two_subscriber_ids_each_receive_every_post_once(client, people, post_worker, lounge, sids):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    one, two = sids("bob-one"), sids("carol-two")
    created = subscribe(client, bob, one, [lounge])
    assert created["id"] == one and created["owner"] == "bob" and created["groups"] == [lounge]
    assert created["backlog"] == 0 and created["topics"] == {} and created["created_at"].endswith("Z")
    subscribe(client, carol, two, [lounge])  # carol is not a member: public groups are readable
    ids = [post(client, alice if n % 2 else bob, lounge, f"post {n}") for n in range(10)]

    for who, sid in ((bob, one), (carol, two)):
        got = pull_n(client, who, sid, 10)
        assert sorted(p["id"] for p in got) == sorted(ids)
        assert sorted(p["seq"] for p in got) == list(range(1, 11))
        assert all(p["delivery_count"] == 1 and set(p) == POST_FIELDS | {"ack_id", "delivery_count"} for p in got)
        assert ack(client, who, sid, [p["ack_id"] for p in got]) == {"acked": [p["ack_id"] for p in got],
                                                                    "expired": []}
        assert pull(client, who, sid, wait=0.3) == []
        assert describe(client, who, sid)["backlog"] == 0


def test_three_consumers_of_one_id_http_pika_and_aio_pika_get_each_post_exactly_once(
    app, client, people, post_worker, lounge, sids, consumers
):
    alice, bob = people["alice"], people["bob"]
    sid = sids("shared")
    subscribe(client, bob, sid, [lounge])
    group = consumers(sid)
    group.http(app, bob, work=0.01)
    group.pika(work=0.01)
    group.aio_pika(work=0.01)
    time.sleep(0.5)  # every consumer attached
    ids = [post(client, alice, lounge, f"p{n}") for n in range(60)]
    group.wait_for(len(ids))
    time.sleep(1.0)  # room for a duplicate to show up
    group.close()
    got = group.ids()
    assert sorted(got) == sorted(ids), "each post exactly once across the three consumers"
    by_consumer = {name: sum(1 for r in group.received if r.consumer == name) for name in ("http", "pika", "aio-pika")}
    assert all(by_consumer.values()), f"the work was not shared: {by_consumer}"
    assert all(r.delivery_count == 1 for r in group.received)
    assert describe(client, bob, sid)["backlog"] == 0


def test_amqp_message_format(client, people, post_worker, lounge, sids, consumers):
    """What docs/subscriptions.md promises an AMQP consumer of postroom.sub.<sid>."""
    alice, bob = people["alice"], people["bob"]
    sid = sids("format")
    subscribe(client, bob, sid, [lounge])
    first = post(client, alice, lounge, "héllo ✓", subject="subj", topic="news")
    second = post(client, bob, lounge, "reply", in_reply_to=first)
    group = consumers(sid)
    group.pika()
    group.wait_for(2)
    group.close()
    by_id = {r.post["id"]: r for r in group.received}
    one, two = by_id[first], by_id[second]
    assert set(one.post) == POST_FIELDS | {"v", "kind"}
    assert (one.post["v"], one.post["kind"], one.post["seq"], one.post["group"], one.post["topic"]) == (
        1, "post", 1, lounge, "news")
    assert (one.post["from"], one.post["subject"], one.post["body"], one.post["in_reply_to"]) == (
        "alice", "subj", "héllo ✓", None)
    assert wire.parse_time(one.post["sent_at"]) and one.post["sent_at"].endswith("Z")
    assert (two.post["seq"], two.post["topic"], two.post["in_reply_to"]) == (2, None, first)
    for item, seq in ((one, 1), (two, 2)):
        props = item.properties
        assert (props.content_type, props.message_id, props.type, props.delivery_mode) == (
            "application/json", item.post["id"], "postroom.post.v1", 2)
        assert item.headers["x-postroom-group"] == lounge and item.headers["x-postroom-seq"] == seq
        assert item.delivery_count == 1
        assert wire.decode_post(json.dumps(item.post).encode()).seq == seq


# -- leases, redelivery, dead letters ---------------------------------------------------------------


def test_amqp_consumer_that_dies_without_ack_hands_its_posts_to_another_consumer(
    client, people, post_worker, lounge, sids, consumers, broker
):
    alice, bob = people["alice"], people["bob"]
    sid = sids("dies")
    subscribe(client, bob, sid, [lounge])
    ids = [post(client, alice, lounge, f"p{n}") for n in range(3)]
    archived(client, alice, lounge, 3)
    wait_until(lambda: queue_depth(broker.url, topology.subscription_queue(sid)) == 3, what="3 posts queued")
    dying = consumers(sid)
    dying.pika(name="dying", prefetch=10, ack=False)
    dying.wait_for(3)
    dying.close()  # closes its connection without an ack
    assert all(r.delivery_count == 1 for r in dying.received)

    got = pull_n(client, bob, sid, 3)
    assert sorted(p["id"] for p in got) == sorted(ids)
    assert [p["delivery_count"] for p in got] == [2, 2, 2]
    ack(client, bob, sid, [p["ack_id"] for p in got])
    assert describe(client, bob, sid)["backlog"] == 0


class TestLeases:
    """Short leases: ``lease_seconds=1``."""

    @pytest.fixture
    def settings(self, settings):
        return settings.replace(lease_seconds=1)

    def test_unacked_http_lease_expires_and_comes_back_with_delivery_count_plus_one(
        self, client, people, post_worker, lounge, sids
    ):
        alice, bob = people["alice"], people["bob"]
        sid = sids("lease")
        subscribe(client, bob, sid, [lounge])
        ids = [post(client, alice, lounge, f"p{n}") for n in range(3)]
        first = pull_n(client, bob, sid, 3)
        assert pull(client, bob, sid, wait=0) == []  # leased to someone: nobody else gets them meanwhile
        assert [p["delivery_count"] for p in first] == [1, 1, 1]
        assert describe(client, bob, sid)["backlog"] == 3  # leased count as backlog
        time.sleep(1.3)

        second = pull_n(client, bob, sid, 3)
        assert sorted(p["id"] for p in second) == sorted(ids)
        assert [p["delivery_count"] for p in second] == [2, 2, 2]
        assert {p["ack_id"] for p in second}.isdisjoint(p["ack_id"] for p in first)
        old = [p["ack_id"] for p in first]
        new = [p["ack_id"] for p in second]
        result = ack(client, bob, sid, old[:1] + new + ["no-such-ack-id"] + old[1:])
        assert result == {"acked": new, "expired": old[:1] + ["no-such-ack-id"] + old[1:]}
        assert ack(client, bob, sid, new) == {"acked": [], "expired": new}  # repeated
        assert describe(client, bob, sid)["backlog"] == 0
        time.sleep(1.2)
        assert pull(client, bob, sid, wait=0.3) == []  # acked posts never come back

    def test_expired_ack_ids_are_listed_as_expired(self, client, people, post_worker, lounge, sids):
        alice, bob = people["alice"], people["bob"]
        sid = sids("late")
        subscribe(client, bob, sid, [lounge])
        post(client, alice, lounge)
        got = pull_n(client, bob, sid, 1)
        time.sleep(1.3)
        # Past its lease, not yet handed back (no pull and no lease worker since): still expired.
        assert ack(client, bob, sid, [got[0]["ack_id"]]) == {"acked": [], "expired": [got[0]["ack_id"]]}
        again = pull_n(client, bob, sid, 1)
        assert again[0]["id"] == got[0]["id"] and again[0]["delivery_count"] == 2
        assert ack(client, bob, sid, [again[0]["ack_id"]])["acked"] == [again[0]["ack_id"]]

    def test_expired_http_lease_goes_to_an_amqp_consumer_through_the_lease_worker(
        self, settings, client, people, post_worker, lounge, sids, consumers
    ):
        alice, bob = people["alice"], people["bob"]
        sid = sids("to-amqp")
        subscribe(client, bob, sid, [lounge])
        ids = [post(client, alice, lounge, f"p{n}") for n in range(2)]
        pull_n(client, bob, sid, 2)  # and never acked: the HTTP consumer "died"
        reaper = type(post_worker)(settings, LeaseReaper).start()  # conftest's WorkerThread
        try:
            group = consumers(sid)
            group.pika()
            group.wait_for(2, timeout=10)
            group.close()
        finally:
            reaper.stop()
        assert sorted(group.ids()) == sorted(ids)
        assert [r.delivery_count for r in group.received] == [2, 2]
        for r in group.received:
            assert r.headers[topology.HEADER_DELIVERY_COUNT] == 1
            assert r.headers.get("x-postroom-group") == lounge and r.headers.get("x-postroom-seq") == r.post["seq"]
            assert r.properties.message_id == r.post["id"] and r.properties.delivery_mode == 2
        assert reaper.consumer.stats["handed_back"] == 2
        assert describe(client, bob, sid)["backlog"] == 0

    def test_after_five_deliveries_a_post_goes_to_the_dead_letters(self, client, people, post_worker, lounge, sids):
        alice, bob, carol = people["alice"], people["bob"], people["carol"]
        sid = sids("poisoned")
        subscribe(client, bob, sid, [lounge])
        doomed = post(client, alice, lounge, "nobody acks me")
        counts = []
        for _ in range(topology.SUBSCRIPTION_MAX_DELIVERIES):
            got = pull_n(client, bob, sid, 1)
            assert got[0]["id"] == doomed
            counts.append(got[0]["delivery_count"])
            time.sleep(1.2)
        assert counts == [1, 2, 3, 4, 5]
        assert pull(client, bob, sid, wait=1) == []
        response = client.get(f"/v1/subscriptions/{sid}/dead-letters", headers=bob)
        assert response.status_code == 200
        letters = response.get_json()["messages"]
        assert len(letters) == 1
        assert letters[0]["id"] == doomed and letters[0]["body"] == "nobody acks me"
        assert letters[0]["reason"] == "max_deliveries" and letters[0]["delivery_count"] == 5
        assert describe(client, bob, sid)["backlog"] == 0
        # Reading them does not consume them; someone else may not read them at all.
        assert len(client.get(f"/v1/subscriptions/{sid}/dead-letters", headers=bob).get_json()["messages"]) == 1
        problem(client.get(f"/v1/subscriptions/{sid}/dead-letters", headers=carol), 404)
        post(client, alice, lounge, "still flowing")
        assert pull_n(client, bob, sid, 1)[0]["body"] == "still flowing"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_amqp_consumer_that_keeps_failing_a_post_sends_it_to_the_dead_letters(
    client, people, post_worker, lounge, sids, broker
):
    """The broker enforces the same limit for AMQP consumers (quorum queue delivery limit)."""
    alice, bob = people["alice"], people["bob"]
    sid = sids("amqp-dlq")
    subscribe(client, bob, sid, [lounge])
    doomed = post(client, alice, lounge, "crashes every consumer")
    counts = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        method, properties, body = channel.basic_get(topology.subscription_queue(sid), auto_ack=False)
        if method is None:
            connection.close()
            if queue_depth(broker.url, topology.subscription_dead_queue(sid)):
                break
            time.sleep(0.1)
            continue
        assert json.loads(body)["id"] == doomed
        counts.append(amqp_delivery_count(properties.headers))
        connection.close()  # "crashes": no ack
    letters = client.get(f"/v1/subscriptions/{sid}/dead-letters", headers=bob).get_json()["messages"]
    assert [(letter["id"], letter["reason"]) for letter in letters] == [(doomed, "delivery_limit")]
    assert counts == list(range(1, topology.SUBSCRIPTION_MAX_DELIVERIES + 1))


def test_backlog_is_waiting_plus_leased(client, people, post_worker, lounge, sids, broker):
    alice, bob = people["alice"], people["bob"]
    sid = sids("backlog")
    subscribe(client, bob, sid, [lounge])
    for n in range(5):
        post(client, alice, lounge, f"p{n}")
    wait_until(lambda: queue_depth(broker.url, topology.subscription_queue(sid)) == 5, what="5 posts queued")
    assert describe(client, bob, sid)["backlog"] == 5
    got = pull(client, bob, sid, max=2)
    assert len(got) == 2
    assert describe(client, bob, sid)["backlog"] == 5  # 3 waiting + 2 leased
    ack(client, bob, sid, [got[0]["ack_id"]])
    assert describe(client, bob, sid)["backlog"] == 4
    ack(client, bob, sid, [got[1]["ack_id"]])
    assert describe(client, bob, sid)["backlog"] == 3
    rest = pull(client, bob, sid, max=10)
    assert len(rest) == 3
    ack(client, bob, sid, [p["ack_id"] for p in rest])
    assert describe(client, bob, sid)["backlog"] == 0


def test_pull_parameters(client, people, lounge, sids):
    bob = people["bob"]
    sid = sids("params")
    subscribe(client, bob, sid, [lounge])
    for bad in ("max=0", "max=-1", "max=x", "wait=-1", "wait=nan", "wait=x", "max=1.5"):
        problem(client.get(f"/v1/subscriptions/{sid}/messages?{bad}", headers=bob), 400, "invalid_parameter")
    assert client.get(f"/v1/subscriptions/{sid}/messages?max=1000&wait=0", headers=bob).status_code == 200
    problem(client.post(f"/v1/subscriptions/{sid}/ack", json={"ack_ids": "x"}, headers=bob), 422)
    problem(client.post(f"/v1/subscriptions/{sid}/ack", json={}, headers=bob), 422)


def test_long_poll_returns_as_soon_as_a_post_is_available(app, client, people, post_worker, lounge, sids):
    alice, bob = people["alice"], people["bob"]
    sid = sids("poll")
    subscribe(client, bob, sid, [lounge])
    started = time.monotonic()
    assert pull(client, bob, sid, wait=0) == []
    assert time.monotonic() - started < 1.0  # wait=0 does not wait
    started = time.monotonic()
    assert pull(client, bob, sid, wait=1) == []
    assert 0.9 <= time.monotonic() - started < 3.0  # an empty long poll waits its time, then answers []

    result: dict[str, Any] = {}

    def long_poll():
        t0 = time.monotonic()
        result["messages"] = pull(app.test_client(), bob, sid, wait=10)
        result["returned"] = time.monotonic()
        result["took"] = result["returned"] - t0

    thread = threading.Thread(target=long_poll)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()
    posted_at = time.monotonic()
    posted = post(client, alice, lounge, "wake up")
    thread.join(12)
    assert not thread.is_alive()
    assert [p["id"] for p in result["messages"]] == [posted]
    late = result["returned"] - posted_at
    assert late < 4.0, f"the long poll answered {late:.2f} s after the post"
    assert result["took"] < 5.0


def test_start_earliest_replays_history_and_latest_does_not(client, people, post_worker, lounge, sids):
    alice, bob = people["alice"], people["bob"]
    old = [post(client, alice, lounge, f"old {n}", topic=["news", None][n % 2]) for n in range(4)]
    archived(client, alice, lounge, 4)
    earliest, latest, news = sids("earliest"), sids("latest"), sids("news-earliest")
    subscribe(client, bob, earliest, [lounge], start="earliest")
    subscribe(client, bob, latest, [lounge], start="latest")
    subscribe(client, bob, news, [lounge], start="earliest", topics={lounge: ["news"]})
    assert describe(client, bob, earliest)["backlog"] == 4
    replayed = pull_n(client, bob, earliest, 4)
    assert [p["id"] for p in replayed] == old and [p["seq"] for p in replayed] == [1, 2, 3, 4]
    assert [p["seq"] for p in pull_n(client, bob, news, 2)] == [1, 3]
    assert pull(client, bob, latest, wait=0.5) == []
    new = post(client, alice, lounge, "new", topic="news")
    for sid in (latest, earliest, news):
        got = pull_n(client, bob, sid, 1)
        assert [p["id"] for p in got] == [new]
        ack(client, bob, sid, [got[0]["ack_id"]])
    # start applies when the id is created; a later PUT does not replay again
    assert subscribe(client, bob, latest, [lounge], expect=200, start="earliest")["backlog"] == 0
    assert pull(client, bob, latest, wait=0.5) == []


def test_topic_patterns_select_exact_topics_or_any(client, people, post_worker, lounge, sids, broker):
    alice, bob = people["alice"], people["bob"]
    put_group(client, alice, "other")
    exact, star, whole, both = sids("exact"), sids("star"), sids("whole"), sids("both")
    shown = subscribe(client, bob, exact, [lounge], topics={lounge: ["news", "sport"]})
    assert shown["topics"] == {lounge: ["news", "sport"]}
    assert subscribe(client, bob, star, [lounge], topics={lounge: ["*"]})["topics"] == {lounge: ["*"]}
    subscribe(client, bob, whole, [lounge])
    subscribe(client, bob, both, [lounge, "other"], topics={"other": ["news"]})
    problem(client.put(f"/v1/subscriptions/{sids('bad')}", json={"groups": [lounge], "topics": {"other": ["x"]}},
                       headers=bob), 422)
    sent = {topic: post(client, alice, lounge, f"about {topic}", topic=topic)
            for topic in ("news", "sport", "weather", "newsy", None)}
    other_news = post(client, alice, "other", "other news", topic="news")
    post(client, alice, "other", "other chat", topic="chat")

    def topics_of(sid, n):
        got = pull_n(client, bob, sid, n)
        assert pull(client, bob, sid, wait=0.5) == [], "more posts than the patterns select"
        ack(client, bob, sid, [p["ack_id"] for p in got])
        return sorted((p["group"], p["topic"] or "") for p in got)

    assert topics_of(exact, 2) == [(lounge, "news"), (lounge, "sport")]
    everything = sorted((lounge, t or "") for t in sent)
    assert topics_of(star, 5) == everything
    assert topics_of(whole, 5) == everything
    assert topics_of(both, 6) == sorted(everything + [("other", "news")]) and other_news

    # Changing the patterns rebinds: now only weather.
    subscribe(client, bob, exact, [lounge], expect=200, topics={lounge: ["weather"]})
    post(client, alice, lounge, "news again", topic="news")
    post(client, alice, lounge, "weather again", topic="weather")
    assert topics_of(exact, 1) == [(lounge, "weather")]


# -- ownership and visibility ----------------------------------------------------------------------


def test_someone_elses_subscriber_id_is_403_on_put_and_404_everywhere_else(client, people, lounge, sids):
    bob, carol = people["bob"], people["carol"]
    sid = sids("bobs")
    subscribe(client, bob, sid, [lounge])
    problem(client.put(f"/v1/subscriptions/{sid}", json={"groups": [lounge]}, headers=carol), 403,
            "subscription_taken")
    problem(client.get(f"/v1/subscriptions/{sid}", headers=carol), 404)
    problem(client.delete(f"/v1/subscriptions/{sid}", headers=carol), 404)
    problem(client.get(f"/v1/subscriptions/{sid}/messages", headers=carol), 404)
    problem(client.post(f"/v1/subscriptions/{sid}/ack", json={"ack_ids": ["x"]}, headers=carol), 404)
    problem(client.get(f"/v1/subscriptions/{sid}/dead-letters", headers=carol), 404)
    assert describe(client, bob, sid)["owner"] == "bob"  # untouched
    for unknown in ("nosuch-sid", "Bad!", "x"):
        problem(client.get(f"/v1/subscriptions/{unknown}", headers=bob), 404)
        problem(client.get(f"/v1/subscriptions/{unknown}/messages", headers=bob), 404)
    for bad in ("Bad", "x", "a#b", "a*b", "-ab", "x" * 65):
        problem(client.put(f"/v1/subscriptions/{bad.replace('#', '%23')}", json={"groups": [lounge]}, headers=bob),
                422)
    problem(client.put(f"/v1/subscriptions/{sids('empty')}", json={"groups": []}, headers=bob), 422)
    assert client.delete(f"/v1/subscriptions/{sid}", headers=bob).status_code == 204
    problem(client.get(f"/v1/subscriptions/{sid}", headers=bob), 404)
    # Once deleted, the id is free again.
    subscribe(client, carol, sid, [lounge])


def test_subscribing_to_a_group_you_cannot_read_is_404(client, people, sids):
    alice, carol = people["alice"], people["carol"]
    put_group(client, alice, "secret", visibility="private")
    problem(client.put(f"/v1/subscriptions/{sids('peek')}", json={"groups": ["secret"]}, headers=carol), 404)
    problem(client.put(f"/v1/subscriptions/{sids('peek')}", json={"groups": ["nosuch"]}, headers=carol), 404)
    subscribe(client, alice, sids("mine"), ["secret"])


def test_private_posts_never_reach_a_non_members_subscription(client, people, post_worker, sids, broker):
    """Also when a public group turns private under an existing subscription."""
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_group(client, alice, "club")
    join(client, alice, "club", "bob")
    member_sid, outsider_sid = sids("member"), sids("outsider")
    subscribe(client, bob, member_sid, ["club"])
    subscribe(client, carol, outsider_sid, ["club"])  # public now: fine
    public = post(client, alice, "club", "public times")
    assert [p["id"] for p in pull_n(client, carol, outsider_sid, 1)] == [public]

    response = client.put("/v1/groups/club", json={"visibility": "private"}, headers=alice)
    assert response.status_code == 200
    secret = post(client, alice, "club", "members only")
    assert [p["id"] for p in pull_n(client, bob, member_sid, 2)] == [public, secret]
    # The member got it, so the worker has routed it: carol's queue must not hold it.
    assert queue_depth(broker.url, topology.subscription_queue(outsider_sid)) == 0
    assert pull(client, carol, outsider_sid, wait=0.5) == []
    assert describe(client, carol, outsider_sid)["groups"] == []


@pytest.mark.parametrize("visibility", ["public", "private"])
def test_a_removed_members_subscription_stops_receiving(client, people, post_worker, sids, broker, visibility):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_group(client, alice, "club", visibility=visibility)
    put_group(client, alice, "other")
    join(client, alice, "club", "bob")
    join(client, alice, "club", "carol")
    bob_sid, carol_sid = sids("bob"), sids("carol")
    subscribe(client, bob, bob_sid, ["club", "other"])
    subscribe(client, carol, carol_sid, ["club"])
    before = post(client, alice, "club", "before")
    assert [p["id"] for p in pull_n(client, bob, bob_sid, 1)] == [before]

    assert client.delete("/v1/groups/club/members/bob", headers=alice).status_code == 204
    after = post(client, alice, "club", "after")
    elsewhere = post(client, alice, "other", "elsewhere")
    assert [p["id"] for p in pull_n(client, carol, carol_sid, 2)] == [before, after]  # routed by now
    got = pull_n(client, bob, bob_sid, 1)
    assert [p["id"] for p in got] == [elsewhere]
    assert pull(client, bob, bob_sid, wait=0.5) == []
    assert describe(client, bob, bob_sid)["groups"] == ["other"]


def test_deleting_a_group_removes_it_from_every_subscription(client, people, post_worker, sids, broker):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    put_group(client, alice, "doomed")
    put_group(client, alice, "kept")
    bob_sid, carol_sid, only_sid = sids("bob"), sids("carol"), sids("only")
    subscribe(client, bob, bob_sid, ["doomed", "kept"])
    subscribe(client, carol, carol_sid, ["kept", "doomed"], topics={"doomed": ["news"]})
    subscribe(client, carol, only_sid, ["doomed"])
    assert client.delete("/v1/groups/doomed", headers=alice).status_code == 204
    assert describe(client, bob, bob_sid)["groups"] == ["kept"]
    shown = describe(client, carol, carol_sid)
    assert shown["groups"] == ["kept"] and shown["topics"] == {}
    assert describe(client, carol, only_sid)["groups"] == []
    # The name again, a new group: the old subscriptions do not get its posts.
    put_group(client, alice, "doomed")
    post(client, alice, "doomed", "new group", topic="news")
    kept = post(client, alice, "kept", "kept")
    archived(client, alice, "doomed", 1)
    assert [p["id"] for p in pull_n(client, bob, bob_sid, 1)] == [kept]
    assert [p["id"] for p in pull_n(client, carol, carol_sid, 1)] == [kept]
    for who, sid in ((bob, bob_sid), (carol, carol_sid), (carol, only_sid)):
        assert pull(client, who, sid, wait=0.3) == []
        assert queue_depth(broker.url, topology.subscription_queue(sid)) == 0


# -- poison on the ingress exchange ----------------------------------------------------------------


def ingress_key(group: str, topic: str | None) -> str:
    """The routing key of a post on ``postroom.groups`` (``post.v1``, or ``<group>.<topic>``)."""
    if hasattr(topology, "POST_ROUTING_KEY"):
        return topology.POST_ROUTING_KEY
    return topology.post_routing_key(group if rules.is_group_name(group) else "lounge",
                                     topic if rules.is_topic(topic) else None)


def raw_post(**overrides) -> tuple[bytes, dict]:
    post_id = str(uuid.uuid4())
    document = {"v": 1, "kind": "post", "id": post_id, "group": "lounge", "from": "alice", "topic": None,
                "subject": "", "body": "raw", "in_reply_to": None, "sent_at": "2030-01-01T00:00:00Z"}
    document.update(overrides)
    # user_id: the test broker's user, whom the worker trusts to publish for any sender.
    return json.dumps(document).encode(), {"message_id": document["id"], "type": wire.POST_TYPE,
                                           "user_id": "guest",
                                           "routing_key": ingress_key(document["group"], document["topic"])}


def publish_ingress(url: str, posts: list[tuple[bytes, dict]]) -> None:
    """Publish raw posts to ``postroom.groups`` as an AMQP application would."""
    for body, properties in posts:
        properties = dict(properties)
        key = properties.pop("routing_key", None) or ingress_key("lounge", None)
        publish_raw(url, [(body, properties)], exchange=topology.GROUPS_EXCHANGE, routing_key=key)


def test_poison_posts_are_dead_lettered_with_a_reason_and_good_posts_keep_flowing(
    client, people, post_worker, lounge, sids, broker
):
    alice, bob = people["alice"], people["bob"]
    sid = sids("poison")
    subscribe(client, bob, sid, [lounge])
    poisons = {
        "invalid_json": (b'{"v": 1, "kind": "post", ', {"message_id": str(uuid.uuid4()), "user_id": "guest"}),
        "unknown_group": raw_post(group="nosuch"),
        "not_a_member": raw_post(**{"from": "carol"}),
        "invalid_character": raw_post(body="nul \u0000 here"),
        "invalid_schema": raw_post(group="lounge.x"),  # a dot would become a routing-key word
    }
    wildcard = raw_post(topic="#")
    good = raw_post(body="good raw post")
    batch = []
    for body_props in (*poisons.values(), wildcard):
        batch += [body_props, raw_post(body="good between")]
    publish_ingress(broker.url, batch + [good])
    api_post = post(client, alice, lounge, "through the API")
    wait_until(lambda: queue_depth(broker.url, topology.POSTS_DEAD_QUEUE) >= len(poisons) + 1, what="dead letters")
    got = pull_n(client, bob, sid, len(poisons) + 3)
    assert sorted(p["seq"] for p in got) == list(range(1, len(poisons) + 4))  # poison took no seq
    assert {p["body"] for p in got} == {"good between", "good raw post", "through the API"} and api_post

    dead = drain(broker.url, topology.POSTS_DEAD_QUEUE)
    reasons = {}
    for letter in dead:
        reason = letter.headers.get(topology.HEADER_DEAD_REASON)
        reasons[letter.properties.message_id] = reason.decode() if isinstance(reason, bytes) else reason
    expected = {props["message_id"]: reason for reason, (_, props) in poisons.items()}
    expected[wildcard[1]["message_id"]] = "invalid_schema"
    assert reasons == expected
    assert queue_depth(broker.url, topology.POSTS_ARCHIVE_QUEUE) == 0


def test_an_idempotent_retry_of_an_archived_post_is_not_delivered_again(client, people, post_worker, lounge, sids):
    """A client that retries a post with its Idempotency-Key (say after a timeout) gets the
    same id; the post is archived once, and a subscriber does not get it a second time."""
    alice, bob = people["alice"], people["bob"]
    sid = sids("retry")
    subscribe(client, bob, sid, [lounge])
    headers = {**alice, "Idempotency-Key": "retry-1"}
    first = client.post(f"/v1/groups/{lounge}/messages", json={"body": "once"}, headers=headers).get_json()["id"]
    archived(client, alice, lounge, 1)
    again = client.post(f"/v1/groups/{lounge}/messages", json={"body": "once"}, headers=headers)
    assert again.status_code == 202 and again.get_json()["id"] == first
    marker = post(client, alice, lounge, "after the retry")
    got = pull_n(client, bob, sid, 2)
    assert [p["id"] for p in got] == [first, marker]
    assert pull(client, bob, sid, wait=0.5) == [], "the retry was delivered a second time"


def test_big_http_pulls_lease_each_post_once(client, people, post_worker, lounge, sids, broker):
    """Pulls of up to 100 posts, acked at once: no post comes back. (RabbitMQ quorum queues
    drop acks beyond ~32 in flight on a channel that closes right after them,
    rabbitmq-server#10327: each broker operation of a pull must settle few enough.)"""
    alice, bob = people["alice"], people["bob"]
    sid = sids("big")
    subscribe(client, bob, sid, [lounge])
    ids = []
    for round_ in range(2):
        ids += [post(client, alice, lounge, f"r{round_} p{n}") for n in range(100)]
        wait_until(lambda: queue_depth(broker.url, topology.subscription_queue(sid)) == 100, what="100 posts queued")
        got = pull(client, bob, sid, max=100)
        assert len(got) == 100
        assert ack(client, bob, sid, [p["ack_id"] for p in got])["expired"] == []
        time.sleep(0.3)
        again = pull(client, bob, sid, max=100, wait=0.5)
        counts = [p["delivery_count"] for p in again]
        assert again == [], f"{len(again)} acked posts came back (delivery counts {counts[:5]})"
        assert all(p["delivery_count"] == 1 for p in got)
    assert describe(client, bob, sid)["backlog"] == 0
