"""A pull feed on one durable consumer, with explicit credit.

We send the JetStream pull requests ourselves (`$JS.API.CONSUMER.MSG.NEXT`), each on its
own reply subject, so we always know how many jobs we have asked for and not yet received:
the scheduler keeps that credit equal to its free slots, which is what makes capacity real
and load spread by itself. Jobs arrive under their own subject, so they are counted against
the oldest open request (the server fills requests in order); status messages (408
expired, 404 nothing there, 409 limits) arrive on the request's reply subject and close it;
100 is an idle heartbeat.
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
        self._sub: Subscription | None = None
        self.empty_until = 0.0
        """For no-wait feeds: when the last poll found nothing, do not ask again before this."""

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await unsubscribe(sub)
        self._pending.clear()

    def outstanding(self) -> int:
        now = time.monotonic()
        for token in [t for t, p in self._pending.items() if p.expires_at < now]:
            del self._pending[token]
        return sum(p.remaining for p in self._pending.values())

    def forget(self) -> None:
        """After a reconnect the server may have lost our requests: count none as open."""
        self._pending.clear()

    async def request(self, n: int) -> None:
        token = str(next(self._tokens))
        if self.lingering:
            body = PullRequest(batch=n, expires=int(self.expires * 1e9))
            horizon = self.expires + 1.0
        else:
            body = PullRequest(batch=n, no_wait=True)
            horizon = 5.0
        self._pending[token] = _Pending(n, time.monotonic() + horizon)
        await self.nc.publish(self._api, _encoder.encode(body), reply=f"{self._inbox}.{token}")

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(names.H_STATUS) if msg.headers else None
        if status is not None:
            if status == _HEARTBEAT:
                return
            pending = self._pending.pop(msg.subject.rsplit(".", 1)[-1], None)
            if not self.lingering and pending is not None and pending.remaining > 0:
                self.empty_until = time.monotonic() + EMPTY_POLL_PAUSE
            self._on_change()
            return
        for token, pending in self._pending.items():
            pending.remaining -= 1
            if pending.remaining <= 0:
                del self._pending[token]
            break
        self._on_job(msg, self)
