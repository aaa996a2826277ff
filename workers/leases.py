"""The lease worker: hands expired HTTP leases back to their subscriber id's queue."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os

import aio_pika

from app.services.subscriptions import handback_for
from app.store import subscriptions as store
from app.store.db import TRANSIENT_ERRORS, database_proxy, reset_connection
from config import topology
from config.settings import Settings
from workers.consumer import connect_unless_stopped, register

logger = logging.getLogger(__name__)


@register("leases")
class LeaseReaper:
    """Every second, returns posts whose HTTP lease ran out, so that any consumer of the
    subscriber id (HTTP or AMQP) gets them again; after too many deliveries they go to the
    subscription's dead letters. An HTTP pull does the same for its own subscriber id; this
    worker covers subscriber ids that only AMQP consumers read."""

    interval = 1.0
    batch = 500

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = asyncio.Event()
        self.db_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
        self.stats = {"handed_back": 0, "dead": 0}

    def request_stop(self) -> None:
        """Stop after the current round."""
        self.stopping.set()

    async def run(self) -> None:
        """Hand back expired leases until stopped, reconnecting after any failure."""
        while not self.stopping.is_set():
            try:
                await self._session()
            except Exception:  # at the process boundary: log and start over
                logger.exception("lease worker failed; starting again")
                await self._pause(1.0)
        self.db_thread.shutdown(wait=True)

    async def _session(self) -> None:
        connection = await connect_unless_stopped(self.settings.amqp_url, f"postroom-leases-{os.getpid()}", self.stopping)
        if connection is None:
            return
        try:
            channel = await connection.channel(publisher_confirms=True)
            declared = await topology.declare_topology(channel)
            exchanges = {"": channel.default_exchange, **declared.exchanges}
            while not self.stopping.is_set():
                await self._round(exchanges)
                await self._pause(self.interval)
        finally:
            await connection.close()

    async def _round(self, exchanges: dict) -> None:
        loop = asyncio.get_running_loop()
        leases = await loop.run_in_executor(self.db_thread, self._claim)
        for lease in leases:
            handback = handback_for(lease)
            out = handback.outgoing
            message = aio_pika.Message(out.body, headers=out.headers, message_id=out.message_id, type=out.type,
                                       content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            # Not mandatory: a subscription deleted meanwhile has no queue, and its posts go with it.
            await exchanges[out.exchange].publish(message, routing_key=out.routing_key, mandatory=False, timeout=10)
            await loop.run_in_executor(self.db_thread, store.drop_lease, lease.ack_id)
            self.stats["dead" if handback.dead else "handed_back"] += 1

    def _claim(self) -> list:
        try:
            return store.claim_expired(None, self.batch)
        except TRANSIENT_ERRORS:
            reset_connection(database_proxy.obj)
            return []

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
