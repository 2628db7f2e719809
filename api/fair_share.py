"""Fair share of a model's queue among tenants: a burst from one cannot starve the others.

JetStream hands a model's jobs to workers in the order they were queued, so a tenant that
queues 500 jobs would make everyone after it wait for all 500. Instead each tenant may
have at most a *share* of a model's jobs queued and not yet started at once: twice the
model's live capacity (its workers' slots) plus 2 (`share_of`) — enough to keep every slot
fed and a short queue in JetStream, small enough that another tenant's job waits behind at
most about two rounds of each busy tenant's jobs. A request past its tenant's share waits
here, in the api, until one of that tenant's queued jobs is taken by a worker or ends, or
its first-token deadline passes (then 504, as a job that waited in the queue). Another
tenant's job is therefore queued behind at most one share of each busy tenant's jobs.

The share is counted per api replica (no round trip on the request's path): with N
replicas behind a balancer a tenant may queue up to N shares. docs/routing.md explains it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Line:
    """One tenant's jobs of one model: how many are queued, who waits to queue."""

    queued: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


def share_of(capacity: int) -> int:
    """How many of a model's jobs one tenant may have queued, for the model's capacity."""
    return 2 * max(0, capacity) + 2


class Ticket:
    """A request's place in its tenant's share; `leave` once its job started or ended."""

    __slots__ = ("_gate", "_key", "_left")

    def __init__(self, gate: FairShare, key: tuple[str, str]) -> None:
        self._gate = gate
        self._key = key
        self._left = False

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._gate._leave(self._key)


class FairShare:
    def __init__(self, share_for: Callable[[str], int]) -> None:
        """`share_for(model)`: how many jobs of the model one tenant may have queued."""
        self._share_for = share_for
        self._lines: dict[tuple[str, str], _Line] = {}

    def queued(self, model: str, tenant: str) -> int:
        line = self._lines.get((model, tenant))
        return line.queued if line is not None else 0

    async def enter(self, model: str, tenant: str, timeout: float) -> Ticket | None:
        """A place in the tenant's share of the model's queue; None when `timeout` seconds
        passed first."""
        key = (model, tenant)
        line = self._lines.setdefault(key, _Line())
        if not line.waiting and line.queued < max(1, self._share_for(model)):
            line.queued += 1
            return Ticket(self, key)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.waiting.append(turn)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await turn
        except TimeoutError:
            if self._withdraw(key, turn):
                return None
        except asyncio.CancelledError:
            if not self._withdraw(key, turn):
                self._leave(key)  # given a place as the client went: pass it on
            raise
        return Ticket(self, key)

    def _withdraw(self, key: tuple[str, str], turn: asyncio.Future[None]) -> bool:
        """Stop waiting; False when the place was given meanwhile (the caller holds it)."""
        if turn.done() and not turn.cancelled():
            return False
        turn.cancel()
        self._drop(key)
        return True

    def _leave(self, key: tuple[str, str]) -> None:
        line = self._lines.get(key)
        if line is None:
            return
        line.queued -= 1
        share = max(1, self._share_for(key[0]))
        while line.waiting and line.queued < share:
            turn = line.waiting.popleft()
            if not turn.done():
                line.queued += 1
                turn.set_result(None)
        self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        line = self._lines.get(key)
        if line is None:
            return
        while line.waiting and line.waiting[0].done():
            line.waiting.popleft()
        if line.queued <= 0 and not any(not t.done() for t in line.waiting):
            del self._lines[key]
