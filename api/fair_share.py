"""Fair share of a model's queue among tenants and priority classes, across api replicas.

JetStream hands a model's jobs to workers in the order they were queued, so a tenant that
queues 500 jobs would make everyone after it wait for all 500, and no class could overtake
them. Instead each tenant may have at most a *share* of a model's jobs queued and not yet
started at once: the model's live capacity (its workers' slots) plus 2 (`share_of`) —
enough to keep every slot fed (a slot that frees takes the next queued job while the api
queues another), small enough that another tenant's job waits behind at most about one
round of each busy tenant's jobs. And no
request queues while a job of a higher priority class is queued or waiting to queue for the
model: a high-class request waits behind at most the jobs already queued, never behind the
backlog of the lower classes. A request that may not queue yet waits here, first come first
served within its tenant and class, until its turn or its first-token deadline (then 504,
as a job that waited in the queue).

The counts live in Redis (`api/fair_ledger.py`), shared by every replica: two apis give a
tenant the same share one would. Only the first waiting request of each (model, tenant,
class) line looks at them — at once when a place frees on this replica, else every `POLL`
seconds; the others of the line sleep until they are first (no wake-up per change or poll,
so n requests opening at once cost n wake-ups, not n²). docs/routing.md explains it.

**Fast path: an uncongested model makes no Redis call.** The share and the classes only
order requests when a model's queue is busy. So when the model has room now — no request of
it waits in this replica's lines, the queue estimate shows no wait for it, and this
replica's tickets of it not yet started, plus its jobs still running that started after the
oldest heartbeat of the model's workers, are fewer than the free slots those heartbeats show
(`queue_estimate.free_slots`) — a request gets a *local* ticket at once: counted in this
process only, no Redis call when it enters or leaves. Otherwise the shared counts decide,
as above. Edge cases:

- Stale heartbeats (every 2 s): the free slots lag. This replica's running jobs that
  started since the oldest heartbeat are taken off them, and those the heartbeats show in
  flight that have ended since are given back (a job's ticket is left a second time when
  it ends; `api/started_jobs.py`), and its unstarted tickets bound what bypasses
  the counts, so during a flood at most (replicas x free slots) jobs bypass the ledger
  before it engages, and those start at once or soon (the slots were free).
- Local tickets are not in the shared counts: a tenant may have up to the model's free
  slots more queued than its share, once, as the model turns busy.
- Classes: a local ticket is only given while the model has a free slot for it and nothing
  waits here, so a high-class request is behind nobody; a lower-class request that
  bypasses while a high-class one waits on another replica takes a free slot, not its
  place (the bound above). Once a line waits here, every request of the model goes through
  the counts, in order.
- Without a live view (`room_for` not given: tests, the bench's Redis rows) there is no
  fast path.
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

from llmq.api.fair_ledger import LocalLedger, Look, RedisLedger, ShareLedger
from llmq.api.fresh_tickets import FreshTickets
from llmq.api.started_jobs import NO_ROOM, LiveRoom, StartedJobs
from llmq.api.tenancy.models import NORMAL_RANK
from llmq.dispatcher.queue_estimate import free_slots
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
Room = Callable[[str], LiveRoom]
"""model -> its slots as the live workers' heartbeats show them; no free slot while the
queue estimate shows a wait for it."""


def live_room(registry: WorkerRegistry, estimate: Callable[[str], float | None]) -> Room:
    """The model's free slots from the live workers' heartbeats, none while queued jobs wait."""

    def room(model: str) -> LiveRoom:
        workers = registry.workers_for(model)
        if not workers:
            return NO_ROOM
        beats = [w.heartbeat_at for w in workers]
        busy = sum(min(w.in_flight, w.capacity) for w in workers)
        free = free_slots(workers, model) if estimate(model) == 0.0 else 0
        return LiveRoom(free, min(beats), max(beats), busy)

    return room


def share_of(capacity: int) -> int:
    """How many of a model's jobs one tenant may have queued, for the model's capacity."""
    return max(0, capacity) + 2


class Ticket:
    """A request's place in the model's queue; `leave` once its job started or ended (a
    second `leave`, when the job ended, frees the slot it was seen holding)."""

    __slots__ = ("_epoch", "_gate", "_id", "_left", "_line", "_seen")

    def __init__(self, gate: FairShare, line: Line, ticket_id: str | None) -> None:
        """`ticket_id` None: a local ticket (the fast path), not in the shared counts."""
        self._gate = gate
        self._line = line
        self._id = ticket_id
        self._left = False
        self._seen: int | None = None
        self._epoch = gate.fresh.given(line[0])

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._gate.fresh.started(self._line[0], self._epoch)
            self._seen = self._gate._leave(self._line, self._id)
        elif self._seen is not None:
            self._gate._ended(self._line[0], self._seen)
            self._seen = None


class FairShare:
    def __init__(
        self,
        share_for: Callable[[str], int],
        ledger: ShareLedger | None = None,
        hold: float = HOLD,
        renew: float = RENEW,
        room_for: Room | None = None,
    ) -> None:
        """`share_for(model)`: how many jobs of the model one tenant may have queued;
        `room_for`: the model's free slots now, for the fast path (none without it)."""
        self._share_for = share_for
        self._room_for = room_for
        self._unstarted: dict[str, int] = {}
        """model -> this replica's tickets (local or shared) not yet left."""
        self._jobs = StartedJobs()
        """Its jobs started and running: slots the heartbeats do not show in use, or show
        in use and free now (`api/started_jobs.py`)."""
        self._waiting: dict[str, int] = {}
        """model -> this replica's requests waiting in its lines."""
        self.local = 0
        """Local tickets given (the fast path), for tests and the bench."""
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
        self.fresh = FreshTickets()
        """This replica's tickets not yet started, by the queue estimate's refresh epoch."""

    @classmethod
    def shared(
        cls,
        registry: WorkerRegistry,
        redis: Redis,
        estimate: Callable[[str], float | None] | None = None,
    ) -> FairShare:
        """The gate of an api replica: shares from the models' live capacity, counts in
        Redis shared with every other replica; with `estimate` (the queue estimate's wait),
        the fast path for models with room."""
        return cls(
            lambda model: share_of(registry.capacity_for(model)),
            RedisLedger(redis),
            room_for=live_room(registry, estimate) if estimate is not None else None,
        )

    def _has_room(self, model: str) -> bool:
        """Room for one more job of `model` without a look at the shared counts."""
        if self._room_for is None or self._waiting.get(model):
            return False
        room = self._room_for(model)
        seen = self._unstarted.get(model, 0) + self._jobs.running(model, room)
        return seen < room.free

    # --- this replica's load, for the queue estimate (`queue_estimate.LocalLoad`) ---------

    def new_epoch(self) -> int:
        return self.fresh.new_epoch()

    def counted(self, epoch: int) -> None:
        self.fresh.counted(epoch)

    def busy(self, model: str) -> bool:
        return model in self._waiting or model in self._jobs or model in self.fresh

    def load(self, model: str, since: float) -> tuple[int, int]:
        queued = self._waiting.get(model, 0) + self.fresh.count(model)
        running = self._jobs.running_since(model, since) if self._room_for is not None else 0
        return queued, running

    async def queued(self, model: str, tenant: str) -> int:
        """The tenant's jobs of the model queued and not started (every replica's)."""
        return await self._ledger.queued(model, tenant)

    async def enter(
        self, model: str, tenant: str, timeout: float, rank: int = NORMAL_RANK
    ) -> Ticket | None:
        """A place in the tenant's share of the model's queue; None when `timeout` seconds
        passed first. `rank`: the request's priority class (`tenancy.models.priority_rank`)."""
        line: Line = (model, tenant, rank)
        if self._has_room(model):
            self._unstarted[model] = self._unstarted.get(model, 0) + 1
            self.local += 1
            return Ticket(self, line, None)
        waiters = self._lines.setdefault(line, deque())
        me: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(me)
        self._waiting[model] = self._waiting.get(model, 0) + 1
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        try:
            while True:
                if waiters[0] is not me:  # not first in line: sleep until it is (no polling)
                    left = end - loop.time()
                    if left <= 0:
                        return None
                    await asyncio.wait((me,), timeout=left)
                    continue
                changed = self._changed.setdefault(model, asyncio.Event())
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
            if waiters and not waiters[0].done():
                waiters[0].set_result(None)  # the next of the line is first now
            if self._waiting[model] <= 1:
                del self._waiting[model]
            else:
                self._waiting[model] -= 1
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
            self._ledger.take(Look(model, tenant, rank, ticket_id, hold, share, more))
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
        if taken:
            self._unstarted[model] = self._unstarted.get(model, 0) + 1
        if more or not taken:
            self._marked.add(line)
        else:
            self._marked.discard(line)
        return Ticket(self, line, ticket_id) if taken else None

    def _undo(self, look: asyncio.Future[bool], line: Line, ticket: str) -> None:
        if not look.cancelled() and look.exception() is None and look.result():
            self._unstarted[line[0]] = self._unstarted.get(line[0], 0) + 1
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

    def _ended(self, model: str, seen: int) -> None:
        """A job seen starting ended: its slot is free again."""
        self._jobs.end(model, seen)

    def _leave(self, line: Line, ticket: str | None) -> int | None:
        """Gives the place back; the job's mark among those seen starting, if counted."""
        model, tenant, rank = line
        if self._unstarted.get(model, 0) <= 1:
            self._unstarted.pop(model, None)
        else:
            self._unstarted[model] -= 1
        seen: int | None = None
        if self._room_for is not None:  # it holds a slot the heartbeats may not show yet
            seen = self._jobs.start(model)
        if ticket is None:
            self._poke(model)
            return seen
        self._held.pop(ticket, None)
        if not self._held:
            self._emptied.set()

        async def give_back() -> None:
            try:
                await self._ledger.give_back(model, tenant, rank, ticket)
            finally:
                self._poke(model)

        self._spawn(give_back())
        return seen

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
