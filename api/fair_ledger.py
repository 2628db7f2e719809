"""Where the fair share of a model's queue is counted: in Redis, so every api replica sees
the same counts (`RedisLedger`), or in this process (`LocalLedger`, one replica only).

Both decide alike (`api/fair_share.lua` is the Redis form): a request may queue a job when
its tenant has fewer than its share of the model's jobs queued-not-started and no job of a
higher priority class is queued or waiting to queue. A queued ticket expires unless its
replica renews it (`fair_share.HOLD`), at the latest at its request's first-token deadline
(plus a margin), and a waiting line's lease soon after its last look: a replica that dies
leaves nothing behind for long.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Protocol

from redis.asyncio import Redis

from llmq.schemas import names

LEASE: float = 1.0
"""Seconds a waiting line stays known without looking again (it looks every `POLL`)."""


@dataclass(frozen=True, slots=True)
class Look:
    """One look at a line's turn (`ShareLedger.take`): queue `ticket` (held `hold` seconds
    at most) if it is its turn; else mark its line (model, tenant, rank) as waiting."""

    model: str
    tenant: str
    rank: int
    ticket: str
    hold: float
    share: int
    """How many of the model's jobs one tenant may have queued-not-started."""
    more: bool
    """Others of the line wait behind this one (the line stays marked as waiting)."""


class ShareLedger(Protocol):
    async def take(self, look: Look) -> bool:
        """Whether `look.ticket` was queued (else its line is marked as waiting)."""
        ...

    async def give_back(self, model: str, tenant: str, rank: int, ticket: str) -> None: ...

    async def renew(self, model: str, tickets: list[tuple[str, int, str, float]]) -> None:
        """Hold these live (tenant, rank, ticket, seconds) tickets longer."""
        ...

    async def withdraw(self, model: str, tenant: str, rank: int) -> None:
        """The line has no waiter here any more."""
        ...

    async def queued(self, model: str, tenant: str) -> int: ...


class RedisLedger:
    """One small Lua call per look (`api/fair_share.lua`), state in one Cluster slot per
    model (`names.fair_share_keys`)."""

    def __init__(self, redis: Redis) -> None:
        text = resources.files("llmq.api").joinpath("fair_share.lua").read_text()
        self._redis = redis
        self._script = redis.register_script(text)

    async def take(self, look: Look) -> bool:
        hold_ms, lease_ms = int(look.hold * 1000), int(LEASE * 1000)
        args: list[str | int] = ["take", look.tenant, look.rank, look.ticket, hold_ms, lease_ms]
        args += [look.share, int(look.more)]
        return bool(await self._script(keys=names.fair_share_keys(look.model), args=args))

    async def give_back(self, model: str, tenant: str, rank: int, ticket: str) -> None:
        args: list[str | int] = ["give", tenant, rank, ticket]
        await self._script(keys=names.fair_share_keys(model), args=args)

    async def renew(self, model: str, tickets: list[tuple[str, int, str, float]]) -> None:
        args: list[str | int] = ["renew"]
        for tenant, rank, ticket, hold in tickets:
            args += [tenant, rank, ticket, int(hold * 1000)]
        await self._script(keys=names.fair_share_keys(model), args=args)

    async def withdraw(self, model: str, tenant: str, rank: int) -> None:
        await self._script(keys=names.fair_share_keys(model), args=["withdraw", tenant, rank])

    async def queued(self, model: str, tenant: str) -> int:
        value = await self._redis.hget(names.fair_share_keys(model)[1], tenant)
        return int(value or 0)


@dataclass(slots=True)
class _Model:
    queued: dict[str, tuple[str, int, float]] = field(default_factory=dict)
    """ticket -> (tenant, rank, expiry)"""
    waiting: dict[tuple[int, str], float] = field(default_factory=dict)
    """(rank, tenant) -> lease expiry"""


class LocalLedger:
    """The same decisions in this process's memory (tests, a single replica)."""

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}

    def _model(self, model: str, now: float) -> _Model:
        state = self._models.setdefault(model, _Model())
        state.queued = {k: v for k, v in state.queued.items() if v[2] > now}
        state.waiting = {k: v for k, v in state.waiting.items() if v > now}
        return state

    async def take(self, look: Look) -> bool:
        now = time.monotonic()
        state = self._model(look.model, now)
        tenant, rank = look.tenant, look.rank
        line = (rank, tenant)
        free = (
            sum(1 for who, _, _ in state.queued.values() if who == tenant) < look.share
            and not any(r > rank for _, r, _ in state.queued.values())
            and not any(r > rank for r, _ in state.waiting)
        )
        if free:
            state.queued[look.ticket] = (tenant, rank, now + look.hold)
            if not look.more:
                state.waiting.pop(line, None)
                return True
        state.waiting[line] = now + LEASE
        return free

    async def give_back(self, model: str, tenant: str, rank: int, ticket: str) -> None:
        state = self._models.get(model)
        if state is not None:
            state.queued.pop(ticket, None)

    async def renew(self, model: str, tickets: list[tuple[str, int, str, float]]) -> None:
        state = self._models.get(model)
        now = time.monotonic()
        for _tenant, _rank, ticket, hold in tickets:
            if state is not None and ticket in state.queued:
                who, rank, _ = state.queued[ticket]
                state.queued[ticket] = (who, rank, now + hold)

    async def withdraw(self, model: str, tenant: str, rank: int) -> None:
        state = self._models.get(model)
        if state is not None:
            state.waiting.pop((rank, tenant), None)
            if not state.queued and not state.waiting:
                del self._models[model]

    async def queued(self, model: str, tenant: str) -> int:
        if model not in self._models:
            return 0
        state = self._model(model, time.monotonic())
        return sum(1 for who, _, _ in state.queued.values() if who == tenant)
