"""Read what `Quota.release` booked: usage per tenant, model and UTC day, and the ledger."""

from __future__ import annotations

import time
from typing import Any, Literal, cast

from redis.asyncio import Redis

from llmq.api.tenancy.errors import backend_guard
from llmq.api.tenancy.models import LedgerEntry, UsageRow
from llmq.api.tenancy.periods import utc_day
from llmq.schemas import names

UsageBy = Literal["model", "key", "user"]

_FIELDS = {
    "req": "requests",
    "fail": "failed",
    "in": "prompt_tokens",
    "cached": "cached_tokens",
    "out": "completion_tokens",
    "usd": "cost_usd",
    "hits": "cache_hits",
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class UsageReader:
    """Usage and ledger reads; raise `QuotaBackendDown` when Redis is unreachable."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def usage(
        self, tenant: str, days: int = 7, *, now: float | None = None, by: UsageBy = "model"
    ) -> list[UsageRow]:
        """Rows for the last `days` UTC days (today included), newest day first, then by
        model, or (`by`) by API key id or end user (the row's `model` holds the key or user;
        requests without a key or a `user` are in no row of those)."""
        now = time.time() if now is None else now
        wanted = [utc_day(now, back) for back in range(max(1, days))]
        with backend_guard():
            async with self._redis.pipeline(transaction=False) as pipe:
                for day in wanted:
                    pipe.hgetall(
                        names.usage_key(tenant, day)
                        if by == "model"
                        else names.usage_by_key(tenant, day, by)
                    )
                hashes = await pipe.execute()
        rows: list[UsageRow] = []
        for day, raw in zip(wanted, hashes, strict=True):
            per_model: dict[str, UsageRow] = {}
            for key, value in raw.items():
                kind, _, model = _text(key).partition(":")
                field = _FIELDS.get(kind)
                if field is None:
                    continue
                row = per_model.setdefault(model, UsageRow(tenant=tenant, day=day, model=model))
                number = float(_text(value)) if field == "cost_usd" else int(_text(value))
                setattr(row, field, number)
            rows.extend(per_model[m] for m in sorted(per_model))
        return rows

    async def ledger(self, tenant: str | None = None, count: int = 100) -> list[LedgerEntry]:
        """The newest `count` ledger entries, newest first; of one tenant, or of all."""
        key = names.LEDGER_KEY if tenant is None else names.tenant_ledger_key(tenant)
        with backend_guard():
            raw = await self._redis.xrevrange(key, count=max(1, count))
        return [_entry(entry_id, fields or {}) for entry_id, fields in raw or []]


def _entry(entry_id: Any, raw: dict[Any, Any]) -> LedgerEntry:
    f = {_text(k): _text(v) for k, v in raw.items()}
    cached = f.get("cached") == "true"  # a response-cache answer (release.lua)
    return LedgerEntry(
        id=_text(entry_id),
        ts=int(f["ts"]) / 1000,
        tenant=f["tenant"],
        model=f["model"],
        job_id=f["job"],
        prompt_tokens=int(f["prompt"]),
        completion_tokens=int(f["completion"]),
        reserved_tokens=int(f["reserved"]),
        cost_usd=float(f["cost"]),
        status=cast(Literal["ok", "failed"], f["status"]),
        cached_tokens=int(f.get("cached_tokens" if cached else "cached", 0)),
        key_id=f.get("key", ""),
        user=f.get("user", ""),
        cached=cached,
        cache=f.get("cache", ""),
    )
