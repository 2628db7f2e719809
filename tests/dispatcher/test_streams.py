"""A durable job consumer follows the settings it is ensured with, on a live stream."""

from __future__ import annotations

import nats

from dispatcher import streams
from schemas import names
from tests.stack import unique


async def test_a_changed_delivery_limit_or_ack_wait_reaches_the_live_consumer(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await streams.ensure_stream(js, streams.jobs_stream_config(max_age=60.0))
        model = unique("consumer")
        name = await streams.ensure_consumer(js, names.JOBS_STREAM, model, 10.0, 3)
        assert (await js.consumer_info(names.JOBS_STREAM, name)).config.max_deliver == 3
        await streams.ensure_consumer(js, names.JOBS_STREAM, model, 10.0, 2)
        assert (await js.consumer_info(names.JOBS_STREAM, name)).config.max_deliver == 2
        await streams.ensure_consumer(js, names.JOBS_STREAM, model, 4.0, 2)
        info = await js.consumer_info(names.JOBS_STREAM, name)
        assert (info.config.ack_wait, info.config.max_deliver) == (4.0, 2)
    finally:
        await nc.close()
