"""The api's reply inbox: one subscription on `_INBOX.<instance>.>`, demultiplexed by job id.

One wildcard subscription per process instead of one per request keeps the hot path free of
SUB/UNSUB round trips. Frames for a job nobody waits for any more (the client left, the api
restarted) make us publish that job's cancel, so the worker stops.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmq.schemas import names

log = logging.getLogger(__name__)


class Signal(enum.Enum):
    """What the dispatcher itself puts in a job's queue, beside the worker's frames."""

    EXHAUSTED = "exhausted"
    """JetStream gave up on the job (its max-deliveries advisory)."""
    MISSING = "missing"
    """After a reconnect the job was no longer in its stream: taken, or lost with the server."""


Item = Msg | Signal


class ReplyInbox:
    def __init__(self, nc: Client, instance_id: str) -> None:
        self._nc = nc
        self._prefix = names.inbox_prefix(instance_id) + "."
        self._queues: dict[str, asyncio.Queue[Item]] = {}
        self._sub: Subscription | None = None
        self._orphans_cancelled: set[str] = set()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            self._prefix + ">", cb=self._on_frame, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    def subject(self, job_id: str) -> str:
        return self._prefix + job_id

    def open(self, job_id: str) -> asyncio.Queue[Item]:
        """Frames of the job, and the dispatcher's signals about it."""
        queue: asyncio.Queue[Item] = asyncio.Queue()
        self._queues[job_id] = queue
        return queue

    def close(self, job_id: str) -> None:
        self._queues.pop(job_id, None)

    @property
    def open_count(self) -> int:
        return len(self._queues)

    async def _on_frame(self, msg: Msg) -> None:
        job_id = msg.subject[len(self._prefix) :]
        queue = self._queues.get(job_id)
        if queue is not None:
            queue.put_nowait(msg)
            return
        if job_id not in self._orphans_cancelled:
            if len(self._orphans_cancelled) > 10_000:
                self._orphans_cancelled.clear()
            self._orphans_cancelled.add(job_id)
            await self._nc.publish(names.cancel_subject(job_id))
