"""The AMQP consumer examples of docs/subscriptions.md work, and the page shows them as they are.

Each example (``examples/amqp_consumer_aiopika.py``, ``examples/amqp_consumer_pika.py``)
runs as a subprocess against the test broker, on a subscriber id created through the API,
and must print every post once; docs/subscriptions.md must hold the same code, verbatim.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import pytest

from config import topology
from processes import queue_depth
from support import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "aio-pika": REPO / "examples" / "amqp_consumer_aiopika.py",
    "pika": REPO / "examples" / "amqp_consumer_pika.py",
}
DOC = REPO / "docs" / "subscriptions.md"


@pytest.fixture
def sid(broker):
    name = f"example-{uuid.uuid4().hex[:8]}"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        for queue in (topology.subscription_queue(name), topology.subscription_dead_queue(name)):
            connection.channel().queue_delete(queue)
    finally:
        connection.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("library", sorted(EXAMPLES))
def test_example_consumer_receives_the_posts_of_its_subscriber_id(
    library, client, people, post_worker, broker, sid, tmp_path
):
    alice, bob = people["alice"], people["bob"]
    assert client.put("/v1/groups/lounge", json={}, headers=alice).status_code == 201
    response = client.put(f"/v1/subscriptions/{sid}", json={"groups": ["lounge"]}, headers=bob)
    assert response.status_code == 201, response.get_json()
    ids = []
    for n, topic in enumerate(("news", None, "chat")):
        response = client.post("/v1/groups/lounge/messages", json={"body": f"post {n}", "subject": f"s{n}",
                                                                     "topic": topic}, headers=alice)
        assert response.status_code == 202
        ids.append(response.get_json()["id"])
    wait_until(lambda: queue_depth(broker.url, topology.subscription_queue(sid)) == 3, what="3 posts queued")

    log = tmp_path / "example.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(EXAMPLES[library]), sid, "--url", broker.url, "--count", "3"],
                                   cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    output = log.read_text()
    assert code == 0, output
    lines = output.strip().splitlines()
    assert len(lines) == 3, output
    for n, (line, post_id, topic) in enumerate(zip(lines, ids, ("news", "-", "chat"))):
        assert line == f"lounge #{n + 1} {post_id} [{topic}] from alice (delivery 1): s{n}", output
    # Acked: nothing left for this subscriber id, over AMQP or HTTP.
    time.sleep(0.2)
    assert queue_depth(broker.url, topology.subscription_queue(sid)) == 0
    assert client.get(f"/v1/subscriptions/{sid}", headers=bob).get_json()["backlog"] == 0


def test_docs_show_the_examples_verbatim():
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    for library, path in EXAMPLES.items():
        assert path.read_text() in blocks, f"docs/subscriptions.md does not show {path.name} as it is"
    for name in ("postroom.sub.<sid>", "postroom.sub.<sid>.dead", "x-postroom-delivery-count", "x-postroom-group",
                 "x-postroom-seq"):
        assert name in text
