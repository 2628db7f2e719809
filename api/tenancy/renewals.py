"""Renewing open reservations' leases (`renew.lua`), many per call: part of `Quota`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript

from llmq.schemas import names

RENEW_BATCH = 500
"""Reservations renewed by one script call (it runs atomically: keep each call short)."""

RESERVATION_GRACE = 86_400.0
"""Seconds a reservation record outlives its lease, so a late release still reconciles."""


class Renewals:
    """`Quota`'s renewals; it provides the script, the lease and the call."""

    _renew: AsyncScript
    _lease: float
    _cluster: bool

    async def _call(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        raise NotImplementedError

    async def renew(
        self,
        held: Sequence[tuple[str, str]],
        lease: float | None = None,
        *,
        now: float | None = None,
    ) -> list[bool]:
        """Push the leases of open reservations, given as (tenant, job id), to `now + lease`
        in one script call per `RENEW_BATCH`; per reservation, False when it is gone
        (released, or its lease ran out: a renewal never revives a slot)."""
        now = time.time() if now is None else now
        lease = self._lease if lease is None else lease
        kept: dict[int, bool] = {}
        for part_at in self._renew_parts(held):
            part = [held[i] for i in part_at]
            keys: list[str] = []
            for tenant, job_id in part:
                keys += [names.inflight_key(tenant), names.reservation_key(tenant, job_id)]
            args: list[str | int] = [
                _ms(now),
                _ms(now + lease),
                _ms(RESERVATION_GRACE),
                *(job_id for _, job_id in part),
            ]
            raw = _text(await self._call(self._renew, keys, args))
            kept.update(zip(part_at, (c == "1" for c in raw), strict=True))
        return [kept[i] for i in range(len(held))]

    def _renew_parts(self, held: Sequence[tuple[str, str]]) -> list[list[int]]:
        """Positions in `held` per script call: up to `RENEW_BATCH` each, and in a Cluster
        one tenant's only (a script stays in one slot)."""
        groups: dict[str, list[int]] = {}
        for i, (tenant, _) in enumerate(held):
            groups.setdefault(tenant if self._cluster else "", []).append(i)
        return [
            at[start : start + RENEW_BATCH]
            for at in groups.values()
            for start in range(0, len(at), RENEW_BATCH)
        ]

    async def extend(
        self, tenant: str, job_id: str, lease: float, *, now: float | None = None
    ) -> bool:
        """`renew` of one reservation."""
        return (await self.renew([(tenant, job_id)], lease, now=now))[0]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
