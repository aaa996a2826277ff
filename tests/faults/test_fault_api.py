"""The API as a real gunicorn server: ``--preload``, several processes and threads (C6)."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import requests

from config import topology
from processes import archive_counts, broker_connections, duplicate_ids, queue_depth
from support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PUBLISH_BOUND = 6.5


def http_register(base: str, username: str) -> dict[str, str]:
    """Create a user over HTTP and return their auth headers."""
    password = "correct horse"
    response = requests.post(f"{base}/v1/users", json={"username": username, "password": password}, timeout=10)
    assert response.status_code == 201, response.text
    response = requests.post(f"{base}/v1/tokens", json={"username": username, "password": password}, timeout=10)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_preloaded_gunicorn_processes_each_publish_on_their_own_connection(archive, processes, broker,
                                                                          record_property):
    """C6: gunicorn --preload, 3 processes × 8 threads, 300 concurrent sends over real HTTP:
    all 202, all archived exactly once by a worker process; every gunicorn process has its
    own broker connection (``postroom-api-<pid>``), opened after the fork: none in the master,
    none shared, one per process."""
    server = processes.gunicorn(archive.env(), workers=3, threads=8, preload=True)
    alice = http_register(server.url, "alice")
    http_register(server.url, "bob")
    worker = processes.worker(archive.env())

    local = threading.local()
    total = 300

    def send(n: int) -> tuple[int, str, float]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.monotonic()
        response = session.post(f"{server.url}/v1/messages", headers=alice, timeout=30,
                                json={"to": ["bob"], "subject": f"n{n}", "body": f"concurrent {n}"})
        return response.status_code, response.json().get("id", response.text), time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(send, range(total)))
    statuses = [status for status, _, _ in results]
    slowest = max(seconds for _, _, seconds in results)
    record_property("slowest_send_seconds", round(slowest, 2))
    assert statuses == [202] * total, f"{sum(s != 202 for s in statuses)} sends failed: " \
        f"{[r for r in results if r[0] != 202][:3]}\n{server.tail()}"
    assert len({message_id for _, message_id, _ in results}) == total
    assert slowest < PUBLISH_BOUND

    wait_until(lambda: archive_counts(archive.database_url) == (total, 2 * total), timeout=30,
               what=f"{total} mails archived")
    assert duplicate_ids(archive.database_url) == []
    assert queue_depth(archive.amqp_url, topology.MAIL_ARCHIVE_QUEUE) == 0

    workers = server.worker_pids()
    served = server.access_log_pids("/v1/messages")
    api_connections = [c["connection_name"] for c in broker_connections(broker)
                       if (c["connection_name"] or "").startswith("postroom-api-")]
    pids = [int(name.rsplit("-", 1)[1]) for name in api_connections]
    ours = [pid for pid in pids if pid in workers or pid == server.pid]
    record_property("gunicorn_workers", sorted(workers))
    record_property("served_by", sorted(served))
    print(f"C6: gunicorn master {server.pid}, workers {sorted(workers)}, served by {sorted(served)}, "
          f"api connections {sorted(ours)}")
    assert len(workers) == 3
    assert server.pid not in ours, "the preloaded master opened a broker connection before forking"
    assert len(ours) == len(set(ours)), f"a process has more than one publisher connection: {ours}"
    assert set(ours) == workers, f"connections {ours} are not one per gunicorn worker {workers}"
    assert served and served <= set(ours), f"requests served by {served} without their own connection {ours}"
    assert worker.alive()
