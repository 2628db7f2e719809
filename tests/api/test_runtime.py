"""The api's runtime (api/runtime.py): closing it is bounded and never raises because NATS
is away, so an api stopped during an outage shuts its lifespan down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from llmq.api.runtime import Runtime
from tests.stack import settings, wait_for


@pytest.mark.parametrize("closed", [False, True], ids=["reconnecting", "closed"])
async def test_close_is_quiet_and_bounded_while_nats_is_away(
    own_nats: Any, redis_server: Any, closed: bool
) -> None:
    runtime = await Runtime.open(settings(own_nats.url, redis_server.url))
    own_nats.stop()
    await wait_for(lambda: not runtime.nc.is_connected, timeout=30)
    if closed:  # as nats-py does itself on a protocol error
        with contextlib.suppress(ConnectionResetError):  # a flush to the dead socket
            await runtime.nc.close()
        assert runtime.nc.is_closed
    started = time.monotonic()
    await asyncio.wait_for(runtime.close(), 30)  # raised ConnectionClosedError before
    assert time.monotonic() - started < 10
    assert runtime.nc.is_closed
