"""Baseline (a): raw aio-pika publishing persistent 1 KiB messages with publisher confirms,
``--inflight`` unconfirmed at most (1000), to a durable quorum queue; then a raw consume of
the same messages with prefetch and batch (multiple) acks, for the consume side.

``python -m bench.baselines.amqp_raw --url URL --queue Q --count N`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aio_pika


async def publish(url: str, queue: str, count: int, inflight: int, size: int) -> dict:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    body = b"x" * size
    window = asyncio.Semaphore(inflight)
    exchange = channel.default_exchange

    async def one() -> None:
        try:
            await exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                   routing_key=queue, timeout=30)
        finally:
            window.release()

    started = time.perf_counter()
    tasks = []
    for _ in range(count):
        await window.acquire()
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    await connection.close()
    return {"count": count, "seconds": seconds, "msg_per_s": count / seconds, "inflight": inflight, "size": size}


async def consume(url: str, queue: str, count: int, prefetch: int, batch: int) -> dict:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    q = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    done = asyncio.get_running_loop().create_future()
    seen = 0
    started = time.perf_counter()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen
        seen += 1
        if seen % batch == 0 or seen == count:
            await message.ack(multiple=True)
        if seen == count and not done.done():
            done.set_result(None)

    tag = await q.consume(on_message)
    await asyncio.wait_for(done, timeout=300)
    seconds = time.perf_counter() - started
    await q.cancel(tag)
    await connection.close()
    return {"count": count, "seconds": seconds, "msg_per_s": count / seconds, "prefetch": prefetch, "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", default="bench.raw")
    parser.add_argument("--count", type=int, default=50000)
    parser.add_argument("--inflight", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--prefetch", type=int, default=512)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    result = {"publish": asyncio.run(publish(args.url, args.queue, args.count, args.inflight, args.size))}
    result["consume"] = asyncio.run(consume(args.url, args.queue, args.count, args.prefetch, args.batch))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
