"""The session broker fixture works: AMQP round trip, and stop_app/start_app."""

from __future__ import annotations

import uuid

import pika
import pytest


def test_publish_and_consume_one_message(broker):
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        queue = f"fixture-check-{uuid.uuid4().hex}"
        ch.queue_declare(queue, exclusive=True)
        body = "héllo ✉".encode()
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
        method, _props, got = next(ch.consume(queue, inactivity_timeout=10))
        assert method is not None, "no message came back within 10 s"
        assert got == body
        ch.basic_ack(method.delivery_tag)
        ch.cancel()
    finally:
        conn.close()


def test_stop_app_then_start_app(broker):
    status = broker.ctl("status")
    assert broker.node in status.stdout
    broker.stop_app()
    try:
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(pika.URLParameters(broker.url + "?connection_attempts=1&socket_timeout=2"))
    finally:
        broker.start_app()
    # AMQP answers again, and the node is usable.
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        assert conn.channel().queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()
