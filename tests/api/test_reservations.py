"""`Reservations` against a real Valkey: a reservation is held, refused for now or for
good, and finished exactly once however often it is released."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from llmq.api.reservations import Reservations
from llmq.api.tenancy import Quota, UsageReader, connect
from llmq.api.tenancy.quota import RENEW_BATCH
from llmq.dispatcher.batch.ports import reservation_of
from llmq.schemas.admission import FAILED, JobUsage, Refusal, Reservation
from tests.api.tenants import new_tenant
from tests.stack import refused_port


async def test_reserve_then_release_once(redis: Redis) -> None:
    tenant = await new_tenant(redis, max_concurrent=1)
    quota = Quota(redis)
    reservations = Reservations(quota, fail_open=False)
    held = await reservations.reserve(tenant, "m", 5, 10, "job-1")
    assert isinstance(held, Reservation) and held.held and held.job_id == "job-1"
    assert await quota.inflight(tenant) == 1
    # The one slot is taken: refused for now, with when to ask again.
    refused = await reservations.reserve(tenant, "m", 5, 10, "job-2")
    assert isinstance(refused, Refusal) and refused.status == 429
    assert refused.retry_after is not None and refused.retry_after > 0
    assert "retry-after" in refused.headers
    usage = JobUsage(prompt_tokens=4, completion_tokens=6)
    await reservations.release(held, usage)
    await reservations.release(held, usage)  # a second release (a retry) books nothing
    await reservations.release(held, FAILED)
    assert await quota.inflight(tenant) == 0
    (entry,) = await UsageReader(redis).ledger(tenant)
    assert entry.job_id == "job-1" and entry.status == "ok"
    assert (entry.prompt_tokens, entry.completion_tokens) == (4, 6)


async def test_release_later_finishes_once_and_drains(redis: Redis) -> None:
    tenant = await new_tenant(redis, max_concurrent=3)
    quota = Quota(redis)
    reservations = Reservations(quota, fail_open=False)
    held = [await reservations.reserve(tenant, "m", 1, 1, f"job-{i}") for i in range(3)]
    assert all(isinstance(r, Reservation) for r in held)
    assert await quota.inflight(tenant) == 3
    for reservation in held:
        assert isinstance(reservation, Reservation)
        reservations.release_later(reservation, FAILED)
        reservations.release_later(reservation, FAILED)
    await reservations.drain()
    assert await quota.inflight(tenant) == 0
    ledger = await UsageReader(redis).ledger(tenant)
    assert sorted(e.job_id for e in ledger) == ["job-0", "job-1", "job-2"]
    assert {e.status for e in ledger} == {"failed"}


async def test_refused_for_good(redis: Redis) -> None:
    tenant = await new_tenant(redis, status="suspended")
    reservations = Reservations(Quota(redis), fail_open=False)
    refused = await reservations.reserve(tenant, "m", 1, 1, "job-1")
    assert isinstance(refused, Refusal)
    assert (refused.status, refused.code, refused.retry_after) == (403, "suspended", None)
    assert refused.type == "permission_error"


async def test_no_tenant_holds_nothing(redis: Redis) -> None:
    reservations = Reservations(Quota(redis), fail_open=False)
    held = await reservations.reserve("", "m", 1, 1, "job-1")
    assert isinstance(held, Reservation) and not held.held
    await reservations.release(held, FAILED)  # nothing to give back


async def test_quota_store_down_fails_closed_or_open() -> None:
    down = connect(f"redis://127.0.0.1:{refused_port()}", timeout=0.5)
    try:
        closed = await Reservations(Quota(down), fail_open=False).reserve("t", "m", 1, 1, "j")
        assert isinstance(closed, Refusal)
        assert (closed.status, closed.code) == (503, "quota_store_down")
        assert closed.retry_after is not None  # a batch line waits and asks again
        opened = await Reservations(Quota(down), fail_open=True).reserve("t", "m", 1, 1, "j")
        assert isinstance(opened, Reservation) and not opened.held
    finally:
        await down.aclose()


# --- renewal (issue 12 finding 7) -----------------------------------------------------------


async def test_renewal_keeps_a_slot_past_its_lease_until_released_once(redis: Redis) -> None:
    tenant = await new_tenant(redis, max_concurrent=1)
    quota = Quota(redis, lease=1.0)
    reservations = Reservations(quota, fail_open=False)
    reservations.start_renewal()
    try:
        held = await reservations.reserve(tenant, "m", 5, 10, "long-job")
        assert isinstance(held, Reservation)
        await asyncio.sleep(3.0)  # three leases
        assert reservations.renewals >= 3
        refused = await reservations.reserve(tenant, "m", 1, 1, "other")
        assert isinstance(refused, Refusal) and refused.code == "rate_limit_exceeded"
        await reservations.release(held, JobUsage(5, 7))
        await reservations.release(held, JobUsage(5, 7))
        assert await quota.inflight(tenant) == 0
        assert await reservations.renew() == 0  # nothing left to renew
    finally:
        await reservations.drain()
    (entry,) = await UsageReader(redis).ledger(tenant)
    assert (entry.job_id, entry.completion_tokens, entry.status) == ("long-job", 7, "ok")


async def test_another_replica_takes_over_and_never_revives_a_release(redis: Redis) -> None:
    tenant = await new_tenant(redis, max_concurrent=2)
    first = Reservations(Quota(redis, lease=1.0), fail_open=False)
    second = Reservations(Quota(redis, lease=1.0), fail_open=False)
    one = await first.reserve(tenant, "m", 1, 1, "job-a")
    two = await first.reserve(tenant, "m", 1, 1, "job-b")
    assert isinstance(one, Reservation) and isinstance(two, Reservation)
    # `first` dies without renewing; `second` follows the jobs and renews them.
    second.adopt(tenant, ["job-a", "job-b"])
    for _ in range(6):
        await asyncio.sleep(0.3)
        assert await second.renew() == 2
    assert await Quota(redis).inflight(tenant) == 2
    await second.release(reservation_of(tenant, "m", "job-a"), JobUsage(1, 1))
    await first.release(two, FAILED)  # released elsewhere: the renewer drops it
    assert await second.renew() == 0
    assert await Quota(redis).inflight(tenant) == 0
    ledger = await UsageReader(redis).ledger(tenant)
    assert sorted((e.job_id, e.status) for e in ledger) == [("job-a", "ok"), ("job-b", "failed")]


async def test_a_lapsed_lease_is_not_revived(redis: Redis) -> None:
    tenant = await new_tenant(redis, max_concurrent=1)
    quota = Quota(redis, lease=0.3)
    reservations = Reservations(quota, fail_open=False)
    assert isinstance(await reservations.reserve(tenant, "m", 1, 1, "late"), Reservation)
    await asyncio.sleep(0.5)
    assert await reservations.renew() == 0
    assert await quota.inflight(tenant) == 0


async def test_many_reservations_renewed_in_few_calls(redis: Redis) -> None:
    tenants = [await new_tenant(redis) for _ in range(3)]
    quota = Quota(redis, lease=60.0)
    held = [(t, f"job-{i}") for t in tenants for i in range(400)]
    # A lease long enough that 1200 sequential reserves on a loaded machine all still hold.
    lease = 5.0
    for tenant, job_id in held:
        await quota.reserve(tenant, "m", 1, 1, job_id, lease=lease)
    last_reserved = time.time()
    before = await _script_calls(redis)
    kept = await quota.renew(held)
    assert kept == [True] * len(held)
    assert await _script_calls(redis) - before == -(-len(held) // RENEW_BATCH)
    # Past every first lease: the renewed one holds.
    await asyncio.sleep(max(0.0, last_reserved + lease + 0.2 - time.time()))
    assert [await quota.inflight(t) for t in tenants] == [400, 400, 400]


async def _script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_releases_that_end_together_share_a_round_trip_and_stay_exact(
    redis: Redis,
) -> None:
    tenant = await new_tenant(redis, max_concurrent=50)
    quota = Quota(redis)
    reservations = Reservations(quota, fail_open=False)
    held = [await reservations.reserve(tenant, "m", 10, 20, f"job-{i}") for i in range(40)]
    assert await quota.inflight(tenant) == 40
    for i, reservation in enumerate(held):
        assert isinstance(reservation, Reservation)
        reservations.release_later(reservation, JobUsage(prompt_tokens=i, completion_tokens=2 * i))
        reservations.release_later(reservation, FAILED)  # a second end: changes nothing
    await reservations.drain()
    assert reservations.release_rounds == 1  # all 80 ends queued before the first trip
    assert await quota.inflight(tenant) == 0
    ledger = {e.job_id: e for e in await UsageReader(redis).ledger(tenant)}
    assert len(ledger) == 40
    for i in range(40):
        entry = ledger[f"job-{i}"]
        assert (entry.prompt_tokens, entry.completion_tokens, entry.status) == (i, 2 * i, "ok")


async def test_release_many_after_the_server_forgot_the_script(redis: Redis) -> None:
    """A restarted Redis has no scripts: the pipeline's NOSCRIPT replies are retried."""
    tenant = await new_tenant(redis, max_concurrent=5)
    quota = Quota(redis)
    reservations = Reservations(quota, fail_open=False)
    held = [await reservations.reserve(tenant, "m", 1, 1, f"job-{i}") for i in range(3)]
    await redis.script_flush()
    ended = [(r, JobUsage(prompt_tokens=1, completion_tokens=1)) for r in held]
    assert isinstance(held[0], Reservation)
    outcomes = await reservations.release_many([*ended, (held[0], FAILED)])  # type: ignore[list-item]
    assert outcomes == [True, True, True, False]
    assert await quota.inflight(tenant) == 0
