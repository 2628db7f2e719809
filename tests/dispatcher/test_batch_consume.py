"""`pull_forever` against a real nats-server: with `linger`, messages that came while it
rested are taken in one fetch instead of one fetch each."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import nats
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, StreamConfig

from llmq.dispatcher.batch.consume import pull_forever
from llmq.embedded import EmbeddedNats


async def _batches(nats_server: EmbeddedNats, linger: float) -> list[int]:
    """Sizes of the fetches `pull_forever` handed over: one message, then five published
    together right after it was handled."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    name = "LINGER_" + uuid.uuid4().hex[:8].upper()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="d", ack_policy="explicit"))
    sizes: list[int] = []
    got = asyncio.Event()

    async def handle(msgs: list[Msg]) -> None:
        sizes.append(len(msgs))
        for msg in msgs:
            await msg.ack()
        got.set()

    pulling = asyncio.create_task(
        pull_forever(js, name, "d", lambda: 256, handle, name="test", linger=linger)
    )
    try:
        await js.publish(f"{name}.a", b"1")
        await asyncio.wait_for(got.wait(), 10)
        for i in range(5):
            await js.publish(f"{name}.a", b"%d" % i)
        deadline = time.monotonic() + 10
        while sum(sizes) < 6:
            assert time.monotonic() < deadline, sizes
            await asyncio.sleep(0.01)
        return sizes
    finally:
        pulling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pulling
        await js.delete_stream(name)
        await nc.close()


async def test_lingering_takes_what_came_meanwhile_in_one_fetch(nats_server: EmbeddedNats) -> None:
    assert await _batches(nats_server, linger=0.5) == [1, 5]


async def test_without_linger_every_message_is_handled_as_it_comes(
    nats_server: EmbeddedNats,
) -> None:
    sizes = await _batches(nats_server, linger=0.0)
    assert sizes[0] == 1 and sum(sizes) == 6
