"""One loop, and one task shape, for the durable pull consumers the api replicas share
(results, webhooks, usage reports)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from llmq.dispatcher.tasks import stop_task

log = logging.getLogger(__name__)


async def pull_forever(
    js: JetStreamContext,
    stream: str,
    durable: str,
    room: Callable[[], int],
    handle: Callable[[list[Msg]], Awaitable[None]],
    *,
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


class SharedConsumer:
    """A background task that pulls one durable consumer shared by the api replicas and
    handles the messages of each fetch concurrently; subclasses say what one message is."""

    stream: str
    durable: str
    name: str
    """For the task and the log."""

    def __init__(self, js: JetStreamContext, fetch_batch: int = 256) -> None:
        self.js = js
        self.fetch_batch = fetch_batch
        self._task: asyncio.Task[None] | None = None

    def start_pulling(self) -> None:
        pull = pull_forever(
            self.js,
            self.stream,
            self.durable,
            lambda: self.fetch_batch,
            self._handle_all,
            name=self.name,
        )
        self._task = asyncio.create_task(pull, name=self.name.replace(" ", "-"))

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _handle_all(self, msgs: list[Msg]) -> None:
        await asyncio.gather(*(self._handle(msg) for msg in msgs))

    async def _handle(self, msg: Msg) -> None:
        raise NotImplementedError
