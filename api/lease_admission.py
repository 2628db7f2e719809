"""The api's side of leased budget (docs/routing.md, "Leased budget"): keeping a lease
Redis granted with a request, asking for the next one ahead of need, and ending leases."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from llmq.api.tenancy import Quota, QuotaBackendDown, QuotaDecision
from llmq.api.tenancy.lease_book import LeaseEnds, drop_slots, extend_slots
from llmq.api.tenancy.leases import SLOT_PUSH_AFTER, Leases, Scope
from llmq.api.tenancy.refusals import refusal_of
from llmq.schemas.admission import Refusal, Reservation

log = logging.getLogger(__name__)

LEASE_TICK = 0.1
"""Seconds between looks for ended leases (their free slots go back to Redis)."""


def leased_answer(
    leases: Leases,
    scope: Scope,
    job_id: str,
    decision: QuotaDecision,
    *,
    request: tuple[int, int, str],
    wish: tuple[int, float, float],
) -> Reservation | Refusal:
    """Redis's answer to a request that might have used a lease, `request` = (prompt,
    max_tokens, user), `wish` = what it asked for (`Leases.ask`): keep a lease granted
    with it; a refusal is taken back when a lease came meanwhile (so no leased unit stays
    unspent while a request of its scope is refused)."""
    tenant, _, model = scope
    prompt, max_tokens, user = request
    now = time.time()
    leases.answered(scope)
    if not decision.allowed:
        taken = None
        if decision.http_status == 429:  # a limit, not a refusal of the tenant or key
            taken = leases.take(scope, job_id, prompt, max_tokens, user=user, now=now)
        if taken is None:
            return refusal_of(decision, model)
        return Reservation(tenant, model, job_id, headers=taken.headers, lease=taken.ticket)
    headers = decision.headers()
    granted = decision.lease
    if granted[0] > 0:
        cost = (prompt * granted[5] + max_tokens * granted[6]) / 1e6
        need = prompt + max_tokens
        until, wished = wish[1], wish[0]
        leases.grant(
            scope,
            job_id,
            granted,
            need=need,
            cost=cost,
            until=until,
            headers=headers,
            wished=wished,
        )
    leases.note(scope, now)
    return Reservation(tenant, model, job_id, headers=headers)


async def lease_ahead(
    quota: Quota,
    leases: Leases,
    scope: Scope,
    size: tuple[int, int],
    wish: tuple[int, float, float],
) -> None:
    """Ask Redis for the scope's next lease, for requests of `size` (prompt, max_tokens),
    while its open one still covers requests (`Leases.ahead`), so that no request of a hot
    scope waits for a round trip; near a limit none is granted and requests go to Redis
    one by one."""
    tenant, key_id, model = scope
    prompt, max_tokens = size
    lease_id = "lease-" + os.urandom(12).hex()
    try:
        decision = await quota.reserve(
            tenant,
            model,
            prompt,
            max_tokens,
            lease_id,
            key_id=key_id,
            lease_wish=wish,
            lease_only=True,
        )
    except Exception as exc:  # Redis away: the next request asks, as without one
        log.debug("asking for a lease ahead failed: %s", exc)
        return
    finally:
        leases.answered(scope)
    granted = decision.lease
    if decision.allowed and granted[0] > 0:
        cost = (prompt * granted[5] + max_tokens * granted[6]) / 1e6
        need = prompt + max_tokens
        headers = decision.headers()
        leases.grant(
            scope,
            lease_id,
            granted,
            need=need,
            cost=cost,
            until=wish[1],
            headers=headers,
            wished=wish[0],
        )


async def end_leases(quota: Quota, leases: Leases) -> None:
    """Every `LEASE_TICK` s: the slots of jobs running past `SLOT_PUSH_AFTER` pushed to the
    reservation lease, ended leases' unused slots and budget back to Redis (all retried
    while it is away). Runs until cancelled."""
    ends = LeaseEnds(quota.redis)
    while True:
        await asyncio.sleep(LEASE_TICK)
        now = time.time()
        gone, taken = leases.expired(now), leases.taken(now - SLOT_PUSH_AFTER)
        closed = leases.closed()
        try:
            await extend_slots(quota.redis, taken, time.time() + quota.lease)
            await drop_slots(quota.redis, gone)
            await ends.close(closed)
        except QuotaBackendDown:
            leases.give_back(gone, taken, closed)
        except Exception as exc:
            log.warning("ending leases failed: %s", exc)
