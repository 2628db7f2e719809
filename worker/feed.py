"""A pull feed on one durable consumer, with explicit credit.

We send the JetStream pull requests ourselves (`$JS.API.CONSUMER.MSG.NEXT`), each on its
own reply subject, so we always know how many jobs we have asked for and not yet received:
the scheduler keeps that credit equal to its free slots, which is what makes capacity real
and load spread by itself. Jobs arrive under their own subject, so they are counted against
the oldest open request (the server fills requests in order); status messages (408
expired, 404 nothing there, 409 limits) arrive on the request's reply subject and close it;
100 is an idle heartbeat.

The feed is on the path of every job: jobs come straight from nats-py's read loop
(`subscribe_direct`, no subscription task woken per job), and the credit it holds is a
running count, not a sum over its open requests (a worker of capacity 64 at concurrency 1
holds 64 requests of one job each).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmq._fast import nats as fast_nats
from llmq.dispatcher.connection import unsubscribe
from llmq.schemas import names

_HEARTBEAT = "100"
_encoder = msgspec.json.Encoder()

EMPTY_POLL_PAUSE = 0.5
"""Seconds a no-wait feed rests after finding its stream empty."""


class PullRequest(msgspec.Struct, omit_defaults=True):
    batch: int
    expires: int | None = None
    no_wait: bool = False


@dataclass(slots=True)
class _Pending:
    remaining: int
    expires_at: float


class PullFeed:
    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        *,
        priority: int,
        lingering: bool,
        expires: float,
        on_job: Callable[[Msg, PullFeed], None],
        on_change: Callable[[], None],
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.consumer = consumer
        self.priority = priority
        self.lingering = lingering
        self.expires = expires
        self._on_job = on_job
        self._on_change = on_change
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._tokens = itertools.count()
        self._pending: dict[str, _Pending] = {}
        """Open requests in the order they were sent (which is also their expiry order: a
        feed gives every request the same horizon)."""
        self._open = 0
        """Jobs asked for and not yet received: the sum of `_pending`'s `remaining`."""
        self._sub: Subscription | None = None
        self.empty_until = 0.0
        """For no-wait feeds: when the last poll found nothing, do not ask again before this."""

    async def start(self) -> None:
        self._sub = await fast_nats.subscribe_direct(self.nc, f"{self._inbox}.*", self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await unsubscribe(sub)
        self.forget()

    def outstanding(self) -> int:
        """Jobs asked for and not yet received, once expired requests are let go."""
        pending = self._pending
        if pending:
            now = time.monotonic()
            while pending:
                token = next(iter(pending))
                if pending[token].expires_at >= now:
                    break
                self._close(token)
        return self._open

    def forget(self) -> None:
        """After a reconnect the server may have lost our requests: count none as open."""
        self._pending.clear()
        self._open = 0

    def _close(self, token: str) -> _Pending | None:
        pending = self._pending.pop(token, None)
        if pending is not None:
            self._open -= pending.remaining
        return pending

    async def request(self, n: int) -> None:
        token = str(next(self._tokens))
        if self.lingering:
            body = PullRequest(batch=n, expires=int(self.expires * 1e9))
            horizon = self.expires + 1.0
        else:
            body = PullRequest(batch=n, no_wait=True)
            horizon = 5.0
        self._pending[token] = _Pending(n, time.monotonic() + horizon)
        self._open += n
        await self.nc.publish(self._api, _encoder.encode(body), reply=f"{self._inbox}.{token}")

    def _on_msg(self, msg: Msg) -> None:
        """Called from nats-py's read loop for every message on the feed's inbox."""
        status = msg.headers.get(names.H_STATUS) if msg.headers else None
        if status is not None:
            if status == _HEARTBEAT:
                return
            pending = self._close(msg.subject.rsplit(".", 1)[-1])
            if not self.lingering and pending is not None and pending.remaining > 0:
                self.empty_until = time.monotonic() + EMPTY_POLL_PAUSE
            self._on_change()
            return
        for token, pending in self._pending.items():
            pending.remaining -= 1
            self._open -= 1
            if pending.remaining <= 0:
                del self._pending[token]
            break
        self._on_job(msg, self)
