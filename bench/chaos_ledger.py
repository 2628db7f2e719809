"""After a chaos run: the chaos tenant's usage ledger against its limits.

Every job is booked once (no job id twice in the ledger), no slot is left held once
traffic has stopped (in-flight back to 0 within a lease's reach), and no 60-second window
of the ledger holds more requests (or tokens) than the tenant's RPM (TPM) allows.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

LEDGER_READ = 100_000


async def audit(redis_url: str, key: str, settle: float = 30.0) -> dict[str, Any]:
    """The figures the run prints, with `over_limits` (must be empty)."""
    from llmq.api.tenancy import Quota, TenantStore, UsageReader, connect

    redis = connect(redis_url)
    try:
        found = await TenantStore(redis).resolve(key)
        assert found is not None, "the chaos key does not resolve"
        tenant = found[0]
        quota = Quota(redis)
        inflight = await quota.inflight(tenant.name)
        for _ in range(int(settle / 0.5)):  # releases still on their way, or leases to run out
            if not inflight:
                break
            await asyncio.sleep(0.5)
            inflight = await quota.inflight(tenant.name)
        entries = await UsageReader(redis).ledger(tenant.name, count=LEDGER_READ)
    finally:
        await redis.aclose()
    times = sorted(e.ts for e in entries)
    per_minute = max((_within(times, i, 60.0) for i in range(len(times))), default=0)
    doubled = [job for job, n in Counter(e.job_id for e in entries).items() if n > 1]
    over = []
    if tenant.rpm and per_minute > tenant.rpm:
        over.append(f"rpm {per_minute} > {tenant.rpm}")
    if inflight:
        over.append(f"{inflight} slots still held")
    if tenant.max_concurrent and inflight > tenant.max_concurrent:
        over.append(f"in flight {inflight} > {tenant.max_concurrent}")
    return {
        "ledger_entries": len(entries),
        "ok": sum(1 for e in entries if e.status == "ok"),
        "doubled_job_ids": len(doubled),
        "max_requests_per_60s": per_minute,
        "rpm": tenant.rpm,
        "max_concurrent": tenant.max_concurrent,
        "inflight_after": inflight,
        "over_limits": over + [f"job {j} booked twice" for j in doubled[:5]],
    }


def _within(times: list[float], start: int, span: float) -> int:
    """How many of the sorted `times` fall in [times[start], times[start] + span)."""
    end = start
    while end < len(times) and times[end] < times[start] + span:
        end += 1
    return end - start
