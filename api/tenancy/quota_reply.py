"""The reserve script's reply (`quota.lua`: fields joined by `|`) read into a decision."""

from __future__ import annotations

from typing import cast

from llmq.api.tenancy.models import LimitName, QuotaDecision, Reason, Reservation


def _limit(value: int) -> int | None:
    return None if value < 0 else value


def decision_of(reply: str, tenant: str, model: str, job_id: str) -> QuotaDecision:
    """`quota.lua`'s reply: allowed, reason, limit, retry-after and the `x-ratelimit-*`
    figures (ms and -1 for "no limit"), and for an allowed request its reservation."""
    raw = reply.split("|")
    allowed = raw[0] == "1"
    decision = QuotaDecision(
        allowed=allowed,
        reason=cast(Reason, raw[1]),
        limit=cast(LimitName, raw[2]),
        retry_after=int(raw[3]) / 1000,
        limit_requests=_limit(int(raw[4])),
        remaining_requests=_limit(int(raw[5])),
        reset_requests=int(raw[6]) / 1000,
        limit_tokens=_limit(int(raw[7])),
        remaining_tokens=_limit(int(raw[8])),
        reset_tokens=int(raw[9]) / 1000,
        duplicate=raw[13] == "1",
    )
    if len(raw) > 20:
        budget = raw[18] == "1"
        price = (float(raw[19]), float(raw[20]))
        decision.lease = (int(raw[14]), int(raw[15]), raw[16], raw[17], budget, *price)
    if allowed:
        decision.reservation = Reservation(
            tenant=tenant,
            model=model,
            job_id=job_id,
            reserved_tokens=int(raw[10]),
            reserved_usd=float(raw[11]),
            lease_until=int(raw[12]) / 1000,
        )
    return decision
