"""Consume a Postroom subscriber id over AMQP with pika (see docs/subscriptions.md).

    python examples/amqp_consumer_pika.py SID [--url URL] [--count N]

URL is amqp://<postroom username>:<bearer token>@<host>:5672/ (default: $POSTROOM_AMQP_URL).
Each post of the subscriber id's groups goes to exactly one consumer of postroom.sub.<SID>,
whether it consumes here or pulls over HTTP; once acked, a post never comes back.
"""

from __future__ import annotations

import argparse
import json
import os

import pika


def delivery_count(headers: dict | None) -> int:
    """Return which delivery of this post to the subscriber id this is (1 for the first)."""
    headers = headers or {}
    # Postroom's count (HTTP leases that ran out) plus RabbitMQ's redeliveries (consumers that
    # died or rejected it with requeue).
    return int(headers.get("x-postroom-delivery-count") or 0) + int(headers.get("x-delivery-count") or 0) + 1


def handle(post: dict, deliveries: int) -> None:
    """Do the work for one post; raise to have it delivered again (it is dead-lettered in the end)."""
    print(f"{post['group']} #{post['seq']} {post['id']} [{post['topic'] or '-'}] from {post['from']}"
          f" (delivery {deliveries}): {post['subject'] or post['body'][:60]}", flush=True)


def consume(url: str, sid: str, count: int | None = None, prefetch: int = 10) -> None:
    """Handle posts of ``sid`` until ``count`` were handled (or forever)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        # A post delivered here but handed back unhandled counts as a delivery (quorum queues
        # dead-letter after 5): when stopping after ``count``, take one at a time.
        channel.basic_qos(prefetch_count=1 if count is not None else prefetch)
        queue = f"postroom.sub.{sid}"
        # PUT /v1/subscriptions/{sid} created the queue: only look it up (passive declare).
        channel.queue_declare(queue, passive=True)
        handled = 0
        for method, properties, body in channel.consume(queue):
            try:
                post = json.loads(body)
            except ValueError:
                channel.basic_reject(method.delivery_tag, requeue=False)  # never readable: to the dead letters
                continue
            try:
                handle(post, delivery_count(properties.headers))
            except Exception:
                channel.basic_nack(method.delivery_tag, requeue=True)  # a new delivery, maybe elsewhere
                continue
            handled += 1
            if count is not None and handled >= count:
                channel.cancel()  # stop deliveries first, so nothing more is handed back
                channel.basic_ack(method.delivery_tag)
                break
            channel.basic_ack(method.delivery_tag)
        else:
            channel.cancel()  # posts prefetched but not handled go back to the queue
    finally:
        if connection.is_open:
            connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sid", help="the subscriber id (PUT /v1/subscriptions/{sid} created it)")
    parser.add_argument("--url", default=os.environ.get("POSTROOM_AMQP_URL", "amqp://guest:guest@localhost/"))
    parser.add_argument("--count", type=int, help="stop after this many posts")
    args = parser.parse_args()
    try:
        consume(args.url, args.sid, args.count)
    except KeyboardInterrupt:
        pass  # unacked posts go back to the queue for the other consumers


if __name__ == "__main__":
    main()
