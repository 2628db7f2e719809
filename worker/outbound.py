"""Backpressure on a worker's reply frames: a backend that produces faster than NATS takes
the bytes (many large streams from a fast upstream or the echo backend) waits instead of
overrunning nats-py's outbound buffer (`OutboundBufferLimitError`: frames lost, the client
gets a 502 `frames_lost`).

Before each frame (`ready`): past `HIGH_WATER` bytes not yet sent, the sender waits for one
round trip to the server (a PING/PONG), shared by every job of the connection that waits at
that moment; while NATS is away (reconnecting) it waits for the connection to come back, up
to `RECONNECT_WAIT`. Below the mark nothing waits: never a flush per token. A sender numbers
its frame only after this wait (`replies.FrameSender`), so frames of one job that waited
different times still go out in the order of their numbers.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from nats.aio.client import DEFAULT_PENDING_SIZE, Client

from llmq._fast import nats as fast_nats

HIGH_WATER = DEFAULT_PENDING_SIZE // 4
"""Unsent bytes past which a publisher waits for a flush (nats-py refuses past 2 MiB
while reconnecting)."""
FLUSH_TIMEOUT = 10
"""Seconds one flush may take; then the publish goes ahead (and fails as it would)."""
RECONNECT_WAIT = 10.0
"""Seconds a publisher waits for NATS to come back before it publishes anyway."""
_POLL = 0.05


class Outbound:
    """The publish path of one connection."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._settling: asyncio.Future[None] | None = None
        self.waits = 0
        """How many times a publisher waited (for metrics and tests)."""

    async def ready(self, *, small: bool = False) -> None:
        """Return when the next frame may be published: at once below the mark; `small`
        (a ping: a few bytes that tell the api the job lives) waits only for a lost link,
        never behind the bytes of other frames."""
        nc = self._nc
        if not nc.is_connected or (not small and fast_nats.outbound_bytes(nc) > HIGH_WATER):
            await self.settle()

    async def settle(self) -> None:
        """Wait until NATS took what is pending: one wait shared by every publisher (a
        cancelled publisher never cancels it for the others)."""
        settling = self._settling
        if settling is None or settling.done():
            self.waits += 1
            settling = self._settling = asyncio.ensure_future(self._settle())
        await asyncio.shield(settling)

    async def _settle(self) -> None:
        nc = self._nc
        until = time.monotonic() + RECONNECT_WAIT
        # nats-py sets no event on reconnect (only the callback given at connect): polled
        while not nc.is_connected and not nc.is_closed and time.monotonic() < until:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        if not nc.is_connected:
            return  # the publish says what is wrong
        # a timeout: the publish goes ahead
        await fast_nats.round_trip(nc, FLUSH_TIMEOUT)


_of: weakref.WeakKeyDictionary[Client, Outbound] = weakref.WeakKeyDictionary()


def outbound(nc: Client) -> Outbound:
    """The one `Outbound` of connection `nc`."""
    found = _of.get(nc)
    if found is None:
        found = _of[nc] = Outbound(nc)
    return found
