"""Fair share of a model's queue among tenants and priority classes, across api replicas.

JetStream hands a model's jobs to workers in the order they were queued, so a tenant that
queues 500 jobs would make everyone after it wait for all 500, and no class could overtake
them. Instead each tenant may have at most a *share* of a model's jobs queued and not yet
started at once: twice the model's live capacity (its workers' slots) plus 2 (`share_of`) —
enough to keep every slot fed and a short queue in JetStream, small enough that another
tenant's job waits behind at most about two rounds of each busy tenant's jobs. And no
request queues while a job of a higher priority class is queued or waiting to queue for the
model: a high-class request waits behind at most the jobs already queued, never behind the
backlog of the lower classes. A request that may not queue yet waits here, first come first
served within its tenant and class, until its turn or its first-token deadline (then 504,
as a job that waited in the queue).

The counts live in Redis (`api/fair_ledger.py`), shared by every replica: two apis give a
tenant the same share one would. Only the first waiting request of each (model, tenant,
class) line looks at them — at once when a place frees on this replica, else every `POLL`
seconds. docs/routing.md explains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

from redis.asyncio import Redis

from llmq.api.fair_ledger import LocalLedger, RedisLedger, ShareLedger
from llmq.api.tenancy.models import NORMAL_RANK
from llmq.dispatcher.registry import WorkerRegistry

log = logging.getLogger(__name__)

POLL: Final = 0.1
"""Seconds between looks of a waiting line at the shared counts (places freed elsewhere)."""
HOLD_MARGIN: Final = 5.0
"""Seconds a queued ticket may outlive its request's first-token deadline (a worker drops
the job by then)."""
HOLD: Final = 15.0
"""Seconds a queued ticket counts in the shared counts unless its replica renews it (every
`RENEW` seconds while it lives): a replica that dies stops holding places within this."""
RENEW: Final = 5.0

Line = tuple[str, str, int]
"""(model, tenant, rank)"""


def share_of(capacity: int) -> int:
    """How many of a model's jobs one tenant may have queued, for the model's capacity."""
    return 2 * max(0, capacity) + 2


class Ticket:
    """A request's place in the model's queue; `leave` once its job started or ended."""

    __slots__ = ("_gate", "_id", "_left", "_line")

    def __init__(self, gate: FairShare, line: Line, ticket_id: str) -> None:
        self._gate = gate
        self._line = line
        self._id = ticket_id
        self._left = False

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._gate._leave(self._line, self._id)


class FairShare:
    def __init__(
        self,
        share_for: Callable[[str], int],
        ledger: ShareLedger | None = None,
        hold: float = HOLD,
        renew: float = RENEW,
    ) -> None:
        """`share_for(model)`: how many jobs of the model one tenant may have queued."""
        self._share_for = share_for
        self._hold, self._renew = hold, renew
        self._held: dict[str, tuple[Line, float]] = {}
        """This replica's queued tickets: id -> (line, when it may be held until)."""
        self._renewing: asyncio.Task[None] | None = None
        self._emptied = asyncio.Event()
        self._ledger: ShareLedger = ledger if ledger is not None else LocalLedger()
        self._lines: dict[Line, deque[asyncio.Future[None]]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._marked: set[Line] = set()
        """Lines the shared counts may list as waiting (to withdraw when they empty)."""
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def shared(cls, registry: WorkerRegistry, redis: Redis) -> FairShare:
        """The gate of an api replica: shares from the models' live capacity, counts in
        Redis shared with every other replica."""
        return cls(lambda model: share_of(registry.capacity_for(model)), RedisLedger(redis))

    async def queued(self, model: str, tenant: str) -> int:
        """The tenant's jobs of the model queued and not started (every replica's)."""
        return await self._ledger.queued(model, tenant)

    async def enter(
        self, model: str, tenant: str, timeout: float, rank: int = NORMAL_RANK
    ) -> Ticket | None:
        """A place in the tenant's share of the model's queue; None when `timeout` seconds
        passed first. `rank`: the request's priority class (`tenancy.models.priority_rank`)."""
        line: Line = (model, tenant, rank)
        waiters = self._lines.setdefault(line, deque())
        me: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(me)
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        try:
            while True:
                changed = self._changed.setdefault(model, asyncio.Event())
                if waiters[0] is me:
                    ticket = await self._take(line, end - loop.time(), len(waiters) > 1)
                    if ticket is not None:
                        return ticket
                left = end - loop.time()
                if left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(POLL, left)):
                        await changed.wait()
        finally:
            waiters.remove(me)
            if waiters:
                self._poke(model)  # the next of the line looks at once
            else:
                del self._lines[line]
                if line in self._marked:
                    self._marked.discard(line)
                    self._spawn(self._ledger.withdraw(model, tenant, rank))

    async def _take(self, line: Line, left: float, more: bool) -> Ticket | None:
        model, tenant, rank = line
        ticket_id = secrets.token_hex(8)
        share = max(1, self._share_for(model))
        hold = min(self._hold, left + HOLD_MARGIN)
        look = asyncio.ensure_future(
            self._ledger.take(model, tenant, rank, ticket_id, hold, share, more)
        )
        try:
            taken = await asyncio.shield(look)
        except asyncio.CancelledError:  # the client went: give back what the look took
            look.add_done_callback(lambda done: self._undo(done, line, ticket_id))
            raise
        except Exception as exc:  # no shared counts: admission must not fail on them
            log.warning("fair share unavailable, queueing without it: %s", exc)
            taken = True
        else:
            if taken:
                self._hold_on(ticket_id, line, left + HOLD_MARGIN)
        if more or not taken:
            self._marked.add(line)
        else:
            self._marked.discard(line)
        return Ticket(self, line, ticket_id) if taken else None

    def _undo(self, look: asyncio.Future[bool], line: Line, ticket: str) -> None:
        if not look.cancelled() and look.exception() is None and look.result():
            self._leave(line, ticket)

    def _hold_on(self, ticket: str, line: Line, seconds: float) -> None:
        """Renew the ticket while it lives, at most `seconds` from now."""
        loop = asyncio.get_running_loop()
        self._held[ticket] = (line, loop.time() + seconds)
        if self._renewing is None or self._renewing.done():
            self._renewing = loop.create_task(self._renew_held(), name="fair-share-renew")

    async def _renew_held(self) -> None:
        """Every `RENEW` seconds, hold this replica's live tickets longer; ends when none."""
        loop = asyncio.get_running_loop()
        while self._held:
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._renew):
                    await self._emptied.wait()
            now = loop.time()
            by_model: dict[str, list[tuple[str, int, str, float]]] = {}
            for ticket, ((model, tenant, rank), end) in list(self._held.items()):
                if end <= now:
                    del self._held[ticket]  # its deadline passed: it expires by itself
                    continue
                hold = min(self._hold, end - now)
                by_model.setdefault(model, []).append((tenant, rank, ticket, hold))
            for model, tickets in by_model.items():
                try:
                    await self._ledger.renew(model, tickets)
                except Exception as exc:  # the next round tries again
                    log.warning("fair share renewal failed: %s", exc)

    def _leave(self, line: Line, ticket: str) -> None:
        model, tenant, rank = line
        self._held.pop(ticket, None)
        if not self._held:
            self._emptied.set()

        async def give_back() -> None:
            try:
                await self._ledger.give_back(model, tenant, rank, ticket)
            finally:
                self._poke(model)

        self._spawn(give_back())

    def _poke(self, model: str) -> None:
        """Wake this replica's waiting lines of `model`: a place may have freed."""
        changed = self._changed.pop(model, None)
        if changed is not None:
            changed.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # an expiry cleans up what could not be said now
                log.warning("fair share update failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
