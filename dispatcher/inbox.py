"""The api's reply inbox: one subscription on `_INBOX.<instance>.>`, demultiplexed by job id.

One wildcard subscription per process instead of one per request keeps the hot path free of
SUB/UNSUB round trips. Frames for a job nobody waits for any more (the client left, the api
restarted) make us publish that job's cancel, so the worker stops.

Each open job gets a `Mailbox`, not an `asyncio.Queue` and an `asyncio.timeout` per frame:
a list, one future while the job's reader waits, and one timer that is re-armed only when
it fires early (the job heard from meanwhile), so a steady stream costs no timer work per
frame and about a tenth of a queue's memory.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmq._fast import nats as fast_nats
from llmq.dispatcher.connection import unsubscribe
from llmq.schemas import names

log = logging.getLogger(__name__)


class Signal(enum.Enum):
    """What the dispatcher itself puts in a job's queue, beside the worker's frames."""

    EXHAUSTED = "exhausted"
    """JetStream gave up on the job (its max-deliveries advisory)."""
    MISSING = "missing"
    """After a reconnect the job was no longer in its stream: taken, or lost with the server."""
    OVERFLOW = "overflow"
    """The job's reader fell `Mailbox.limit` bytes behind: later frames were dropped and the
    job cancelled (a client that does not read its stream)."""


Item = Msg | Signal


STALL = 0.25
"""Seconds a bound's timer may fire late before the api takes it for its own stall, not the
job's silence."""
MAX_GRACE = 2.0
"""At most this many seconds of grace after such a stall, once per wait."""
FRAME_OVERHEAD = 700
"""Bytes a buffered frame costs beside its body (nats-py's `Msg`, its subject and header
dict), counted against the mailbox's limit so the limit is close to the memory it holds."""


class Mailbox:
    """One job's frames and signals in arrival order, read by one waiter with a bound.

    The bound is one `loop.call_at` timer per job, re-armed lazily: a later wait only moves
    `_wake`, and the timer, when it fires before `_wake`, sets itself again for `_wake`. A
    wait that ends earlier than the armed timer (rare: the dispatcher's bounds only shrink
    when a job is found missing) re-arms at once.

    Frames it holds are bounded by `limit` bytes (`FRAME_OVERHEAD` each included): a reader
    that falls further behind (its client does not read the stream, and the socket's write
    buffer is full) gets `Signal.OVERFLOW` after what is buffered; later frames are dropped.
    One frame is always taken when nothing is buffered, so a whole answer fits."""

    __slots__ = (
        "_ack",
        "_armed",
        "_bytes",
        "_graced",
        "_items",
        "_timer",
        "_waiter",
        "_wake",
        "limit",
        "on_overflow",
        "overflowed",
    )

    def __init__(self, limit: int = 0) -> None:
        self._items: list[Item] = []
        self.limit = limit
        """Most bytes of frames held at once; 0: no bound."""
        self._bytes = 0
        self.overflowed = False
        self.on_overflow: Callable[[], None] | None = None
        """Called once when the bound is hit (the api cuts a stream nobody reads)."""
        self._ack: Msg | None = None
        """JetStream's reply to the job's publish (`publish.publish_to_inbox`), kept apart
        from the frames: `get` never returns it."""
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        """Loop time the timer is set for."""
        self._wake = 0.0
        """Loop time the current wait ends."""
        self._graced = False
        """The current wait was extended once because the loop itself stood still."""

    def put_nowait(self, item: Item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def put_frame(self, msg: Msg) -> bool:
        """Buffer a worker's frame. True only the one time the frame hits the bound: it is
        dropped and `Signal.OVERFLOW` queued after what is buffered. Once the bound was hit,
        later frames are dropped (False)."""
        if self.overflowed:
            return False
        size = len(msg.data) + FRAME_OVERHEAD
        if self.limit and self._items and self._bytes + size > self.limit:
            self.overflowed = True
            self.put_nowait(Signal.OVERFLOW)
            return True
        self._bytes += size
        self.put_nowait(msg)
        return False

    @property
    def buffered(self) -> int:
        """Frames and signals waiting to be read."""
        return len(self._items)

    def put_ack(self, msg: Msg) -> None:
        self._ack = msg
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def ack(self, timeout: float) -> Msg | None:
        """The publish's reply (taken: a second call waits for another), or None when
        `timeout` seconds pass without one. Frames that come first stay for `get`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self._ack is None:
            left = end - loop.time()
            if left <= 0:
                return None
            try:
                await self._arm(loop, left)
            finally:
                self._waiter = None
        ack, self._ack = self._ack, None
        return ack

    async def get(self, timeout: float) -> Item | None:
        """The next item, or None when `timeout` seconds pass without one."""
        if not self._items:
            try:
                await self._arm(asyncio.get_running_loop(), timeout)
            finally:
                self._waiter = None
            if not self._items:
                return None
        item = self._items.pop(0)
        if self._bytes and not isinstance(item, Signal):
            self._bytes -= len(item.data) + FRAME_OVERHEAD
        return item

    def _arm(self, loop: asyncio.AbstractEventLoop, timeout: float) -> asyncio.Future[None]:
        """The future a wait of `timeout` seconds awaits: done when something is put or
        the bound passed (a future, not a coroutine: one frame less per wait)."""
        self._wake = wake = loop.time() + timeout
        self._graced = False
        timer = self._timer
        if timer is None or self._armed > wake:
            if timer is not None:
                timer.cancel()
            self._armed = wake
            self._timer = loop.call_at(wake, self._fire)
        waiter = self._waiter = loop.create_future()
        return waiter

    def _fire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next `get` arms a timer again
        loop = asyncio.get_running_loop()
        if self._wake > self._armed:  # the wait moved on since the timer was set
            self._armed = self._wake
            self._timer = loop.call_at(self._wake, self._fire)
            return
        late = loop.time() - self._armed
        if late > STALL and not self._graced:
            # The process stood still (a full garbage collection, a starved CPU): frames that
            # came meanwhile wait unread in the socket, behind this timer. Read them first.
            self._graced = True
            self._armed = loop.time() + min(late, MAX_GRACE)
            self._timer = loop.call_at(self._armed, self._fire)
            return
        waiter.set_result(None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._items.clear()  # a cut stream's frames go now, not with the last reference
        self._bytes = 0
        self.on_overflow = None


class ReplyInbox:
    def __init__(self, nc: Client, instance_id: str, buffer_limit: int = 0) -> None:
        self._nc = nc
        self._limit = buffer_limit
        """Bytes of frames each job's mailbox holds at most (`LLMQ_STREAM_BUFFER_BYTES`)."""
        self._prefix = names.inbox_prefix(instance_id) + "."
        self._queues: dict[str, Mailbox] = {}
        self._sub: Subscription | None = None
        self._orphans_cancelled: set[str] = set()
        self._cancels: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await fast_nats.subscribe_direct(self._nc, self._prefix + ">", self._on_frame)

    async def stop(self) -> None:
        """Bounded and quiet when NATS is away (`connection.unsubscribe`)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await unsubscribe(sub)

    def subject(self, job_id: str) -> str:
        return self._prefix + job_id

    def open(self, job_id: str) -> Mailbox:
        """Frames of the job, and the dispatcher's signals about it."""
        mailbox = self._queues[job_id] = Mailbox(self._limit)
        return mailbox

    def close(self, job_id: str) -> None:
        mailbox = self._queues.pop(job_id, None)
        if mailbox is not None:
            mailbox.close()

    @property
    def open_count(self) -> int:
        return len(self._queues)

    async def caught_up(self, timeout: float) -> None:
        """Return once every frame NATS held for this api when called has been read and put
        in its mailbox (a PING's PONG comes after them), when the link is down, or after
        `timeout` seconds: a job's silence is judged only then, so frames that queued
        behind other streams' bytes (this process read slowly: a busy CPU) are not taken
        for a worker's silence."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        await fast_nats.round_trip(self._nc, timeout)
        sub = self._sub
        # shut shortcuts: frames read before the PONG may still wait for the callback task
        # (nats-py sets no event when a subscription's queue empties: polled)
        while sub is not None and sub.pending_msgs and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    def _on_frame(self, msg: Msg) -> None:
        """Called by nats-py's read loop for every message on the inbox (`_Delivery`)."""
        job_id = msg.subject[len(self._prefix) :]
        queue = self._queues.get(job_id)
        if queue is not None:
            headers = msg.headers
            if headers is None or (names.H_FRAME not in headers and names.H_STATUS in headers):
                queue.put_ack(msg)  # JetStream's reply to the job's publish, not a frame
            elif queue.put_frame(msg):
                self._overflow(job_id, queue)
            return
        if job_id not in self._orphans_cancelled:
            if len(self._orphans_cancelled) > 10_000:
                self._orphans_cancelled.clear()
            self._orphans_cancelled.add(job_id)
            self._cancel(job_id)

    def _overflow(self, job_id: str, mailbox: Mailbox) -> None:
        """The job's reader stopped reading: its worker stops now (it would only make frames
        that are dropped), and the api hears once."""
        hook, mailbox.on_overflow = mailbox.on_overflow, None
        self._cancel(job_id)
        if hook is not None:
            hook()

    def _cancel(self, job_id: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._nc.publish(names.cancel_subject(job_id))
        )
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
