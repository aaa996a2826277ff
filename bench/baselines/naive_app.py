"""Baseline (e): the naive design. A bare Flask view publishes each request on a blocking
pika connection of its process (one per process, opened after fork, shared by the
process's threads under a lock since pika is not thread-safe) and waits for the confirm.

Environment: BENCH_AMQP_URL, BENCH_QUEUE (a durable quorum queue, like Postroom's).
"""

from __future__ import annotations

import json
import os
import threading

import pika
from flask import Flask, request

_lock = threading.Lock()
_state: dict = {}


def _channel():
    if _state.get("pid") != os.getpid() or not _state["connection"].is_open:
        connection = pika.BlockingConnection(pika.URLParameters(os.environ["BENCH_AMQP_URL"]))
        channel = connection.channel()
        channel.confirm_delivery()
        _state.update(pid=os.getpid(), connection=connection, channel=channel)
    return _state["channel"]


def create_app() -> Flask:
    app = Flask("bench-naive")
    queue = os.environ.get("BENCH_QUEUE", "bench.naive")
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    @app.post("/send")
    def send():
        document = request.get_json()
        body = json.dumps(document).encode()
        try:
            with _lock:
                # Confirmed and mandatory: basic_publish returns once the broker acked it.
                _channel().basic_publish("", queue, body, props, mandatory=True)
        except pika.exceptions.AMQPError as exc:
            _state.clear()
            return {"code": "broker_unavailable", "detail": repr(exc)}, 503
        return {"status": "accepted"}, 202

    return app
