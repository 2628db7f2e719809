"""llmq's NATS micro services (dispatcher/micro.py): stopping one while NATS does not answer
is bounded (nats-py drains each of its nine subscriptions with a flush of up to 10 s)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from llmq.dispatcher.connection import connect, disconnect
from llmq.dispatcher.micro import STOP_TIMEOUT, LiveService
from tests.stack import unique


async def test_a_stop_while_nats_does_not_answer_is_bounded_and_quiet(own_nats: Any) -> None:
    nc = await connect(own_nats.url, "test-micro")
    service = LiveService(nc, unique("svc"), "1.0.0", "a test service")
    await service.start()
    own_nats.proc.send_signal(signal.SIGSTOP)  # frozen: the socket stays open, no PONG comes
    try:
        started = time.monotonic()
        await asyncio.wait_for(service.stop(), 60)  # about 90 s without the bound
        assert time.monotonic() - started < STOP_TIMEOUT + 3
    finally:
        own_nats.proc.send_signal(signal.SIGCONT)
    await disconnect(nc)
