"""Group numbering under real concurrency: several API processes (gunicorn, real HTTP, many
threads) and two post archive worker processes write one group at once.

What it must show (design: "a reader that pages with after=<seq> can never skip a post,
even with several workers on Postgres"):

- the history ends complete and strictly numbered 1..n, every accepted post exactly once;
- a reader paging with ``after=<last seq>`` *while* posts are being archived never sees a
  gap (each page continues exactly where the last one ended) and, at the end, has every
  post: a seq committed after a higher one would have been skipped for good;
- a subscriber id bound to the group gets every post exactly once.

On PostgreSQL (row lock on the group held to commit) and SQLite (one writer at a time).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pika
import psycopg2
import pytest
import requests

from app.store import schema
from app.store.db import open_database
from config import topology
from processes import Worker, drain, postroom_env, purge_queues, redeclare_topology
from support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POSTERS = 8  # client threads
POSTS_EACH = 30
USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> Iterator[str]:
    """A fresh database with the schema: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/postroom.db"
        database = open_database(url)
        schema.upgrade(database)
        database.close()
        yield url
        return
    base = request.getfixturevalue("postgres_url")
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg2.connect(base) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {name}")
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{name}"
    database = open_database(url)
    schema.upgrade(database)
    database.close()
    try:
        yield url
    finally:
        conn = psycopg2.connect(base)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SET lock_timeout = '10s'")
            cursor.execute(f"DROP SCHEMA {name} CASCADE")
        conn.close()


def post_worker(processes, env) -> Worker:
    """Start ``python -m workers posts`` and wait until it consumes."""
    return processes.worker(env, names=("posts",))


class Api:
    """Real HTTP to the gunicorn under test."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method, path, headers=None, session=None, **kwargs):
        return (session or requests).request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def register(self, username: str) -> dict[str, str]:
        response = self.call("POST", "/v1/users", json={"username": username, "password": "correct horse"})
        assert response.status_code == 201, response.text
        response = self.call("POST", "/v1/tokens", json={"username": username, "password": "correct horse"})
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}


def test_concurrent_posts_from_several_api_processes_and_two_workers_are_numbered_without_gaps(
    database_url, broker, processes, tmp_path: Path, record_property
):
    redeclare_topology(broker.url)
    purge_queues(broker.url)
    env = postroom_env(broker.url, database_url, tmp_path / "var",
                       # Small prefetch and batches: both workers get a share of the posts.
                       POSTROOM_WORKER_PREFETCH="20", POSTROOM_WORKER_BATCH_SIZE="10")
    server = processes.gunicorn(env, workers=2, threads=8)
    workers = [post_worker(processes, env), post_worker(processes, env)]
    api = Api(server.url)
    people = {name: api.register(name) for name in USERS}
    assert api.call("PUT", "/v1/groups/race", people["alice"], json={}).status_code == 201
    for name in USERS[1:]:
        assert api.call("PUT", f"/v1/groups/race/members/{name}", people[name]).status_code == 201
    sid = f"race-{uuid.uuid4().hex[:8]}"
    assert api.call("PUT", f"/v1/subscriptions/{sid}", people["dave"], json={"groups": ["race"]}).status_code == 201

    accepted: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    posting_done = threading.Event()

    def poster(index: int) -> None:
        name = USERS[index % len(USERS)]
        session = requests.Session()
        for n in range(POSTS_EACH):
            response = api.call("POST", "/v1/groups/race/messages", people[name], session=session,
                                json={"body": f"{name} {index}.{n}", "topic": ["a", "b", None][n % 3]})
            with lock:
                if response.status_code == 202:
                    accepted.append(response.json()["id"])
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    seen: list[dict] = []
    gaps: list[str] = []
    pages = [0]

    def reader() -> None:
        session = requests.Session()
        last = 0
        total = POSTERS * POSTS_EACH
        deadline = time.monotonic() + 120
        while last < total and time.monotonic() < deadline:
            response = api.call("GET", f"/v1/groups/race/messages?after={last}&limit=50", people["carol"],
                                session=session)
            if response.status_code != 200:
                gaps.append(f"reader: {response.status_code} {response.text[:200]}")
                return
            page = [post["seq"] for post in response.json()["messages"]]
            pages[0] += 1
            if page != list(range(last + 1, last + 1 + len(page))):
                gaps.append(f"after={last}: page {page[:10]}...")  # a skipped seq can never come back
            seen.extend(response.json()["messages"])
            if page:
                last = page[-1]
            else:
                time.sleep(0.005 if not posting_done.is_set() else 0.05)

    reading = threading.Thread(target=reader)
    reading.start()
    started = time.monotonic()
    posting = [threading.Thread(target=poster, args=(i,)) for i in range(POSTERS)]
    for thread in posting:
        thread.start()
    for thread in posting:
        thread.join(120)
    posting_done.set()
    post_seconds = time.monotonic() - started
    reading.join(120)
    assert not reading.is_alive()
    assert not failures, failures[:5]
    total = POSTERS * POSTS_EACH
    assert len(accepted) == total

    history, after = [], 0
    while True:
        page = api.call("GET", f"/v1/groups/race/messages?after={after}&limit=200", people["bob"]).json()
        history += page["messages"]
        if page["next"] is None:
            break
        after = page["next"]
    assert [p["seq"] for p in history] == list(range(1, total + 1))
    assert sorted(p["id"] for p in history) == sorted(accepted)
    assert api.call("GET", "/v1/groups/race", people["bob"]).json()["high_seq"] == total

    assert not gaps, gaps[:5]
    assert [p["id"] for p in seen] == [p["id"] for p in history], "the reader paging with after=<seq> missed posts"

    wait_until(lambda: api.call("GET", f"/v1/subscriptions/{sid}", people["dave"]).json()["backlog"] >= total,
               timeout=30, what="every post in the subscriber queue")
    delivered = drain(broker.url, topology.subscription_queue(sid))
    assert sorted(d.properties.message_id for d in delivered) == sorted(accepted)  # each exactly once

    api_pids = server.access_log_pids("POST /v1/groups/race/messages")
    for worker in workers:
        assert worker.terminate() == 0
    stats = [worker.stats("posts") for worker in workers]
    record_property("posts_per_second_accepted", round(total / post_seconds, 1))
    record_property("reader_pages", pages[0])
    record_property("worker_stats", stats)
    assert len(api_pids) >= 2, f"the posts were served by {api_pids}: not several API processes"
    assert all(s["stored"] > 0 for s in stats), f"both workers must have archived posts: {stats}"
    assert sum(s["stored"] for s in stats) == total and sum(s["dead"] for s in stats) == 0, stats
    processes.stop_all()
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        connection.channel().queue_delete(topology.subscription_queue(sid))
        connection.channel().queue_delete(topology.subscription_dead_queue(sid))
    finally:
        connection.close()
