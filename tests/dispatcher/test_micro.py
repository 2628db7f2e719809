"""llmq's NATS micro services (dispatcher/micro.py): stopping one while NATS is away is
bounded (nats-py drains each of its subscriptions with a flush of up to 10 s)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from llmq.dispatcher.connection import connect, disconnect
from llmq.dispatcher.micro import STOP_TIMEOUT, LiveService
from tests.stack import unique, wait_for


async def test_a_stop_while_nats_is_away_is_bounded_and_quiet(own_nats: Any) -> None:
    nc = await connect(own_nats.url, "test-micro")
    service = LiveService(nc, unique("svc"), "1.0.0", "a test service")
    await service.start()
    own_nats.stop()
    await wait_for(lambda: not nc.is_connected, timeout=30)
    started = time.monotonic()
    await asyncio.wait_for(service.stop(), 60)  # about 90 s before
    assert time.monotonic() - started < STOP_TIMEOUT + 3
    await disconnect(nc)
