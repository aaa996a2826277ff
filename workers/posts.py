"""The group post archive worker: numbers each post, stores it, then hands it to subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika

from app import wire
from app.store.archive import Outcome
from app.store.post_archive import archive_posts
from config import topology
from workers.consumer import BatchConsumer, register


@register("posts")
class GroupPostConsumer(BatchConsumer[wire.Post]):
    """Reads ``postroom.groups.archive``.

    A post reaches subscribers only after it was committed with its ``seq``: the numbered
    post is published to the ``postroom.posts`` topic exchange (``<group>.<topic>``), where
    each subscriber id's queue is bound. The publish happens before the ack, so a crash in
    between republishes it (subscribers are at-least-once and can dedupe by ``id``/``seq``).
    """

    queue_name = topology.POSTS_ARCHIVE_QUEUE
    dead_routing_key = topology.POSTS_DEAD_ROUTING_KEY

    def parse(self, body: bytes) -> wire.Post:
        """Parse the version-1 post schema (without ``seq``: the archive assigns it)."""
        post = wire.decode_post(body, self.limits)
        if post.seq is not None:
            raise wire.WireError("invalid_schema", "'seq' is assigned by the archive, not by the sender")
        return post

    def store(self, items: Sequence[wire.Post]) -> list[Outcome]:
        """Archive a batch of posts in one transaction."""
        return archive_posts(items)

    async def after_store(self, outcomes: Sequence[Outcome]) -> None:
        """Publish every numbered post (also redelivered duplicates) to the subscribers' exchange."""
        exchange = self.exchanges[topology.POSTS_EXCHANGE]
        publishes = []
        for outcome in outcomes:
            post = outcome.value
            if post is None:
                continue
            message = aio_pika.Message(
                wire.encode_post(post),
                content_type=wire.CONTENT_TYPE,
                message_id=post.id,
                type=wire.POST_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"x-postroom-group": post.group, "x-postroom-seq": post.seq},
            )
            # Not mandatory: a group nobody subscribes to routes nowhere, and that is fine.
            publishes.append(exchange.publish(message, routing_key=topology.post_routing_key(post.group, post.topic),
                                              mandatory=False, timeout=10))
        # All in flight at once, in seq order on one channel; each must be confirmed.
        await asyncio.gather(*publishes)
