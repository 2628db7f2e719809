"""One loop for the durable pull consumers the api replicas share (results, webhooks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

log = logging.getLogger(__name__)


async def pull_forever(
    js: JetStreamContext,
    stream: str,
    durable: str,
    room: Callable[[], int],
    handle: Callable[[list[Msg]], Awaitable[None]],
    name: str,
) -> None:
    """Fetch up to `room()` messages at a time and hand them to `handle`, until cancelled.

    Failures (NATS away, the consumer not there yet) are logged and retried. On exit the
    subscription is dropped explicitly: a fetch cut short may leave a message unaccounted
    for, which would make the connection's drain wait forever.
    """
    sub = None
    try:
        while True:
            try:
                if sub is None:
                    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
                size = room()
                if size <= 0:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    msgs = await sub.fetch(size, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    continue
                await handle(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: fetch failed: %s", name, exc)
                await asyncio.sleep(0.5)
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
