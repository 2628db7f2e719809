"""The queue estimator stops even when its cancel is lost: on Python 3.11 `asyncio.wait_for`
inside nats-py returns a reply that races the cancel and drops the cancel, so one cancel
left its loop running and the api's stop waiting on it forever. Against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats

from llmq.dispatcher import streams
from llmq.dispatcher.queue_estimate import QueueEstimator


class ReplyRacesCancel:
    """The real JetStream context, but the first `consumers_info` takes its reply even when
    cancelled while it waits: what nats-py does when the reply and the cancel meet."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.waiting = asyncio.Event()
        self.lost_cancels = 0

    async def consumers_info(self, *args: Any, **kwargs: Any) -> Any:
        if not self.lost_cancels:
            self.waiting.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.lost_cancels += 1
        return await self.js.consumers_info(*args, **kwargs)


async def test_a_lost_cancel_does_not_keep_the_estimator_running(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_server.url)
    stopping: asyncio.Task[None] | None = None
    try:
        js = nc.jetstream()
        await streams.ensure_stream(js, streams.jobs_stream_config(max_age=60.0))
        racing = ReplyRacesCancel(js)
        estimator = QueueEstimator(racing, lambda: [])  # type: ignore[arg-type]
        estimator.start()
        task = estimator._task
        assert task is not None
        await asyncio.wait_for(racing.waiting.wait(), timeout=10)
        stopping = asyncio.create_task(estimator.stop())
        await asyncio.wait({stopping}, timeout=5)  # asyncio.wait cancels nothing on timeout
        assert stopping.done(), "a lost cancel kept the estimator running"
        assert racing.lost_cancels == 1 and task.done()
    finally:
        if stopping is not None and not stopping.done():
            stopping.cancel()
        if estimator._task is not None:
            estimator._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await estimator._task
        await nc.close()
