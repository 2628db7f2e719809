"""The fair-share gate (api/fair_share.py) on both ledgers (api/fair_ledger.py): in this
process, and in a real Valkey shared by two gates as two api replicas would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from llmq.api.fair_ledger import LocalLedger, Look, RedisLedger, ShareLedger
from llmq.api.fair_share import FairShare, Ticket
from llmq.api.started_jobs import MARGIN, LiveRoom
from llmq.api.tenancy import connect
from llmq.api.tenancy.models import PRIORITY_RANK, priority_rank
from llmq.schemas import names
from tests.spec import assert_valid
from tests.stack import refused_port, unique, wait_for

HIGH, NORMAL, LOW = PRIORITY_RANK["high"], PRIORITY_RANK["normal"], PRIORITY_RANK["low"]


def _patient(url: str) -> Any:
    """A client that waits for a slow Valkey (a loaded machine): past the api's 1 s bound the
    gate lets a request in without the shared counts (fail-open, by design), which is not
    what these tests look at."""
    return connect(url, timeout=30.0)


@pytest.fixture(params=["local", "redis"])
async def ledger(request: Any, redis_server: Any) -> AsyncIterator[ShareLedger]:
    if request.param == "local":
        yield LocalLedger()
        return
    redis = _patient(redis_server.url)
    yield RedisLedger(redis)
    await redis.aclose()


def test_a_keys_class_is_capped_by_its_tenants() -> None:
    assert priority_rank("high", "") == HIGH
    assert priority_rank("high", "low") == LOW
    assert priority_rank("normal", "high") == NORMAL  # never above its tenant
    assert priority_rank("low") == LOW


async def test_the_share_holds_a_tenant_back_and_lets_it_go_in_order(ledger: ShareLedger) -> None:
    model = unique("m")
    gate = FairShare(lambda model: 2, ledger)
    first = await gate.enter(model, "a", 1)
    second = await gate.enter(model, "a", 1)
    assert first is not None and second is not None
    assert await gate.enter(model, "a", 0.05) is None  # past its share: waits, then gives up
    other = await gate.enter(model, "b", 0.05)  # another tenant is not held back
    assert other is not None
    other.leave()
    third = asyncio.create_task(gate.enter(model, "a", 5))
    fourth = asyncio.create_task(gate.enter(model, "a", 5))
    await asyncio.sleep(0.05)
    assert not third.done() and not fourth.done()
    first.leave()
    first.leave()  # leaving twice frees one place only
    ticket = await asyncio.wait_for(third, 2)
    assert ticket is not None and not fourth.done()
    assert await gate.queued(model, "a") == 2
    second.leave()
    last = await asyncio.wait_for(fourth, 2)
    assert last is not None
    ticket.leave()
    last.leave()
    await wait_for(lambda: _zero(gate, model, "a"), timeout=2)


async def _zero(gate: FairShare, model: str, tenant: str) -> bool:
    return await gate.queued(model, tenant) == 0


async def _fill(gate: FairShare, model: str, tenant: str, n: int) -> list[Ticket]:
    tickets = [await gate.enter(model, tenant, 1) for _ in range(n)]
    assert all(t is not None for t in tickets)
    return [t for t in tickets if t is not None]


async def test_a_higher_class_takes_the_next_place_before_any_lower_waiter(
    ledger: ShareLedger,
) -> None:
    model = unique("m")
    gate = FairShare(lambda model: 2, ledger)
    held = await _fill(gate, model, "a", 2)
    order: list[str] = []

    async def enter(name: str, tenant: str, rank: int) -> None:
        ticket = await gate.enter(model, tenant, 10, rank)
        assert ticket is not None
        order.append(name)
        ticket.leave()  # its job started at once

    normal = [asyncio.create_task(enter(f"n{i}", "a", NORMAL)) for i in range(20)]
    await asyncio.sleep(0.15)
    low = asyncio.create_task(enter("low", "c", LOW))
    await asyncio.sleep(0.15)
    high = asyncio.create_task(enter("high", "a", HIGH))  # the same tenant, queued last
    await asyncio.sleep(0.3)
    assert order == []  # the model's queue is full
    held[0].leave()
    await asyncio.wait_for(high, 2)
    assert order[0] == "high"
    held[1].leave()
    await asyncio.wait_for(asyncio.gather(*normal, low), 10)
    # first come first served within a line; the low class only once no normal one waits
    assert order == ["high", *(f"n{i}" for i in range(20)), "low"]


async def test_a_queued_job_of_a_higher_class_holds_the_lower_ones_back(
    ledger: ShareLedger,
) -> None:
    model = unique("m")
    gate = FairShare(lambda model: 3, ledger)
    high = await gate.enter(model, "h", 1, HIGH)
    assert high is not None
    assert await gate.enter(model, "a", 0.2, NORMAL) is None  # until the high job starts
    second = await gate.enter(model, "h", 1, HIGH)  # its own class is not held back
    assert second is not None
    waiting = asyncio.create_task(gate.enter(model, "a", 5, NORMAL))
    await asyncio.sleep(0.15)
    assert not waiting.done()
    high.leave()  # started; one high job is still queued
    await asyncio.sleep(0.15)
    assert not waiting.done()
    second.leave()
    ticket = await asyncio.wait_for(waiting, 2)
    assert ticket is not None
    ticket.leave()


async def test_two_replicas_share_one_count(redis_server: Any) -> None:
    model = unique("m")
    redis = _patient(redis_server.url)
    one, two = (
        FairShare(lambda m: 3, RedisLedger(redis)),
        FairShare(lambda m: 3, RedisLedger(redis)),
    )
    held = [*await _fill(one, model, "a", 2), *await _fill(two, model, "a", 1)]
    assert await one.queued(model, "a") == await two.queued(model, "a") == 3
    assert await two.enter(model, "a", 0.2) is None  # the other replica's jobs count too
    waiting = asyncio.create_task(two.enter(model, "a", 5))
    held[0].leave()  # on replica one: replica two sees the place within a look
    assert await asyncio.wait_for(waiting, 2) is not None
    await redis.aclose()


async def test_a_ticket_of_a_dead_replica_expires(redis_server: Any) -> None:
    model = unique("m")
    redis = _patient(redis_server.url)
    ledger = RedisLedger(redis)
    assert await ledger.take(Look(model, "a", NORMAL, "gone", 0.2, 1, False))
    assert not await ledger.take(Look(model, "a", NORMAL, "next", 5, 1, False))
    await asyncio.sleep(0.3)
    assert await ledger.take(Look(model, "a", NORMAL, "next", 5, 1, False))
    assert await ledger.queued(model, "a") == 1
    for key in names.fair_share_keys(model):
        assert await redis.pttl(key) != -1  # nothing lives forever (-2: already gone)
    await redis.aclose()


async def test_without_redis_a_request_queues_without_the_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The share never fails a request: the quota script, after it, answers for Redis."""

    redis = connect(f"redis://127.0.0.1:{refused_port()}", timeout=1.0)
    gate, model = FairShare(lambda m: 1, RedisLedger(redis)), unique("m")
    tickets = [await asyncio.wait_for(gate.enter(model, "a", 5), 5) for _ in range(2)]
    assert all(t is not None for t in tickets)  # past the share of 1: not counted
    assert "fair share unavailable" in caplog.text
    for ticket in tickets:
        assert ticket is not None
        ticket.leave()
    await asyncio.gather(*gate._tasks)
    await redis.aclose()


async def test_a_replica_renews_its_tickets_and_a_dead_ones_lapse(redis_server: Any) -> None:
    """Held only `hold` seconds unless renewed: a live replica's places stay counted past
    it, a dead replica's stop counting soon (not only at their requests' deadlines)."""
    model = unique("m")
    redis = _patient(redis_server.url)
    live = FairShare(lambda m: 2, RedisLedger(redis), hold=0.4, renew=0.1)
    ticket = await live.enter(model, "a", 30)
    assert ticket is not None
    dead = RedisLedger(redis)  # a replica that took a place and died before renewing it
    assert await dead.take(Look(model, "a", NORMAL, "orphan", 0.4, 2, False))
    assert await live.queued(model, "a") == 2
    await asyncio.sleep(1.0)  # well past the hold: the live ticket was renewed
    second = await live.enter(model, "a", 0.05)  # the orphan's place is free again
    assert second is not None
    assert await live.queued(model, "a") == 2
    ticket.leave()
    second.leave()
    await asyncio.wait_for(asyncio.gather(*live._tasks), 2)
    assert live._renewing is not None
    await asyncio.wait_for(live._renewing, 2)  # it ends once this replica holds nothing
    assert await live.queued(model, "a") == 0
    await redis.aclose()


async def _script_calls(redis: Any) -> int:
    """Lua calls the server ran so far (the fair share's and any other's)."""
    stats = await redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


class _Room:
    """A model's free slots as the heartbeats show them, set by the test."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.busy = 0
        self.heartbeat_at = time.time()

    def __call__(self, model: str) -> LiveRoom:
        return LiveRoom(self.free, self.heartbeat_at, self.heartbeat_at, self.busy)


async def test_an_idle_model_makes_no_redis_call(redis_server: Any) -> None:
    """Room on the model: local tickets, nothing in Redis on enter or leave."""
    model = unique("m")
    redis = _patient(redis_server.url)
    room = _Room(free=2)
    gate = FairShare(lambda m: 2, RedisLedger(redis), room_for=room)
    before = await _script_calls(redis)
    for i in range(20):  # one at a time, each taken by a worker then ended
        ticket = await gate.enter(model, f"t{i % 3}", 1, [LOW, NORMAL, HIGH][i % 3])
        assert ticket is not None
        ticket.leave()  # taken
        ticket.leave()  # ended: its slot is free again
    both = [await gate.enter(model, "a", 1) for _ in range(2)]  # two at once: two slots
    assert all(t is not None for t in both)
    await asyncio.gather(*gate._tasks)
    assert await _script_calls(redis) - before == 0
    assert gate.local == 22
    assert await redis.exists(*names.fair_share_keys(model)) == 0
    await redis.aclose()


async def test_a_congested_model_uses_the_shared_counts(redis_server: Any) -> None:
    """Past the free slots (counting jobs started since the last heartbeat), or while a
    line waits here, requests go through the counts in Redis."""
    model = unique("m")
    redis = _patient(redis_server.url)
    room = _Room(free=2)
    gate = FairShare(lambda m: 1, RedisLedger(redis), room_for=room)
    local = [await gate.enter(model, "a", 1) for _ in range(2)]
    assert gate.local == 2 and await gate.queued(model, "a") == 0
    before = await _script_calls(redis)
    shared = await gate.enter(model, "a", 1)  # no free slot left for it
    assert shared is not None and gate.local == 2
    assert await gate.queued(model, "a") == 1 and await _script_calls(redis) > before
    for ticket in local:
        assert ticket is not None
        ticket.leave()  # started: the heartbeat does not show their slots taken yet
    assert await gate.enter(model, "a", 0.05) is None  # so: the share (1) holds it back
    assert gate.local == 2
    waiting = asyncio.create_task(gate.enter(model, "a", 5))
    await asyncio.sleep(0.05)
    room.heartbeat_at = time.time()  # a new heartbeat: both slots free again
    other = await gate.enter(model, "b", 1)  # but a line of the model waits here
    assert other is not None and gate.local == 2 and await gate.queued(model, "b") == 1
    shared.leave()
    last = await asyncio.wait_for(waiting, 2)
    assert last is not None and gate.local == 2
    for ticket in (other, last):
        ticket.leave()
    await asyncio.gather(*gate._tasks)
    room.free = 0  # the queue estimate shows a wait, or no worker: never local
    ticket = await gate.enter(model, "b", 1)
    assert ticket is not None and gate.local == 2
    ticket.leave()
    await asyncio.gather(*gate._tasks)
    await redis.aclose()


async def test_jobs_a_heartbeat_shows_in_flight_free_their_slots_when_they_end(
    redis_server: Any,
) -> None:
    """A heartbeat that shows this replica's two jobs in flight (no free slot) holds no
    slot once they have ended: the next two requests take the fast path again before the
    next heartbeat, and no more than the heartbeat showed in flight."""
    model = unique("m")
    redis = _patient(redis_server.url)
    room = _Room(free=2)
    gate = FairShare(lambda m: 4, RedisLedger(redis), room_for=room)
    first = [await gate.enter(model, "a", 1) for _ in range(2)]
    for ticket in first:
        assert ticket is not None
        ticket.leave()  # started
    await asyncio.sleep(MARGIN * 2)
    room.heartbeat_at, room.free, room.busy = time.time(), 0, 2  # it shows them in flight
    await asyncio.sleep(MARGIN * 2)
    before = await _script_calls(redis)
    shared = await gate.enter(model, "a", 1)  # they still run: no free slot
    assert shared is not None and gate.local == 2 and await _script_calls(redis) > before
    shared.leave()  # started after the heartbeat
    shared.leave()  # and ended: it frees what it held, no more
    for ticket in first:
        ticket.leave()  # ended after the heartbeat: their slots are free
    again = [await gate.enter(model, "a", 1) for _ in range(2)]
    assert all(t is not None for t in again) and gate.local == 4
    third = await gate.enter(model, "a", 1)  # more than the heartbeat showed in flight
    assert third is not None and gate.local == 4
    for ticket in [*again, third]:
        assert ticket is not None
        ticket.leave()
    await asyncio.gather(*gate._tasks)
    await redis.aclose()


async def test_an_api_serves_an_idle_model_without_the_shared_counts(stack: Any) -> None:
    """Through a real api and worker: one request at a time takes the fast path (the live
    workers' free slots, the queue estimate), and no fair-share key is ever written."""
    model = unique("idle")
    api = await stack.api()
    await stack.worker(model=[model], capacity=2)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    gate: FairShare = api.app.state.serving.fair
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    for i in range(5):
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"n{i} two"}]
        )
        assert_valid("CreateChatCompletionResponse", json.loads(raw.content))
    await client.close()
    assert gate.local == 5
    assert await api.runtime.redis.exists(*names.fair_share_keys(model)) == 0
