"""`StoreWait` with `Reservations` against a real Valkey that is stopped and started again on
the same port (its data kept in an append-only file): a request sent while the store is
down is admitted through the exact path once it is back within the wait; one that outlasts
the wait, or its own deadline, gets the 503 soon after; waiters share one watcher; no
quota counter is off afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmq.api.reservations import Reservations
from llmq.api.tenancy import Quota, Tenant, TenantStore, connect
from llmq.api.tenancy.store_wait import StoreWait
from llmq.embedded import EmbeddedRedis
from llmq.schemas.admission import Refusal, Reservation
from tests.stack import unique

DURABLE = ["--appendonly", "yes", "--appendfsync", "always"]
SLACK = 1.5
"""Seconds a refusal may come after its wait ends (a loaded machine, a ping in flight)."""


class Restartable:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = EmbeddedRedis(data_dir, extra=DURABLE)
        self.port = self.server.port

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = EmbeddedRedis(self.data_dir, port=self.port, extra=DURABLE)


@pytest.fixture
async def valkey(tmp_path: Path) -> AsyncIterator[tuple[Restartable, Redis]]:
    server = Restartable(tmp_path / "valkey")
    client = connect(server.server.url, timeout=1.0)
    yield server, client
    await client.aclose()
    server.stop()


async def _setup(redis: Redis, limit: float, **limits: int) -> tuple[str, Reservations, StoreWait]:
    tenant = unique("sw")
    await TenantStore(redis).create(Tenant(name=tenant, **limits))  # type: ignore[arg-type]
    wait = StoreWait(redis.ping, limit)
    return tenant, Reservations(Quota(redis), fail_open=False, store_wait=wait), wait


async def test_served_once_the_store_is_back(valkey: tuple[Restartable, Redis]) -> None:
    server, redis = valkey
    tenant, reservations, wait = await _setup(redis, 10.0, rpm=4, max_concurrent=10)
    assert isinstance(await reservations.reserve(tenant, "m", 1, 1, "before"), Reservation)
    await asyncio.to_thread(server.stop)
    started = time.monotonic()
    waiting = [
        asyncio.create_task(reservations.reserve(tenant, "m", 1, 1, f"down-{i}")) for i in range(2)
    ]
    await asyncio.sleep(1.0)
    assert not any(task.done() for task in waiting)  # waiting, not refused, not let through
    await asyncio.to_thread(server.start)
    back = time.monotonic()
    held = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert all(isinstance(r, Reservation) and r.held for r in held), held
    assert time.monotonic() - back < SLACK
    assert time.monotonic() - started < 10.0
    assert wait.outages == 1  # both waited on one watcher
    # Exact afterwards: three of the four requests a minute are spent, the slots are held.
    quota = Quota(redis)
    assert await quota.inflight(tenant) == 3
    assert isinstance(await reservations.reserve(tenant, "m", 1, 1, "after"), Reservation)
    refused = await reservations.reserve(tenant, "m", 1, 1, "over")
    assert isinstance(refused, Refusal) and refused.status == 429, refused
    assert await quota.inflight(tenant) == 4


async def test_refused_after_the_wait(valkey: tuple[Restartable, Redis]) -> None:
    server, redis = valkey
    tenant, reservations, _ = await _setup(redis, 0.8, max_concurrent=10)
    await asyncio.to_thread(server.stop)
    started = time.monotonic()
    refused = await reservations.reserve(tenant, "m", 1, 1, "late")
    took = time.monotonic() - started
    assert isinstance(refused, Refusal), refused
    assert (refused.status, refused.code) == (503, "quota_store_down")
    assert 0.8 <= took < 0.8 + SLACK, took
    await asyncio.to_thread(server.start)
    assert await Quota(redis).inflight(tenant) == 0  # the refused request holds nothing


async def test_wait_never_passes_the_deadline(valkey: tuple[Restartable, Redis]) -> None:
    server, redis = valkey
    tenant, reservations, _ = await _setup(redis, 30.0, max_concurrent=10)
    await asyncio.to_thread(server.stop)
    started = time.monotonic()
    refused = await reservations.reserve(tenant, "m", 1, 1, "deadline", wait=0.3)
    took = time.monotonic() - started
    assert isinstance(refused, Refusal) and refused.code == "quota_store_down", refused
    assert took < 0.3 + SLACK, took
    started = time.monotonic()
    at_once = await reservations.reserve(tenant, "m", 1, 1, "no-wait", wait=0.0)
    assert isinstance(at_once, Refusal) and at_once.code == "quota_store_down", at_once
    assert time.monotonic() - started < SLACK


async def test_many_waiters_share_one_watcher(valkey: tuple[Restartable, Redis]) -> None:
    server, redis = valkey
    tenant, reservations, wait = await _setup(redis, 10.0, max_concurrent=100)
    await asyncio.to_thread(server.stop)
    waiting = [
        asyncio.create_task(reservations.reserve(tenant, "m", 1, 1, f"w-{i}")) for i in range(50)
    ]
    await asyncio.sleep(0.8)
    await asyncio.to_thread(server.start)
    held = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert all(isinstance(r, Reservation) for r in held)
    assert wait.outages == 1
    assert await Quota(redis).inflight(tenant) == 50


async def test_fail_open_does_not_wait(valkey: tuple[Restartable, Redis]) -> None:
    """`quota_fail_open` serves unchecked at once, as without the wait."""
    server, redis = valkey
    tenant = unique("sw")
    await TenantStore(redis).create(Tenant(name=tenant, max_concurrent=1))
    wait = StoreWait(redis.ping, 30.0)
    reservations = Reservations(Quota(redis), fail_open=True, store_wait=wait)
    await asyncio.to_thread(server.stop)
    started = time.monotonic()
    served = await reservations.reserve(tenant, "m", 1, 1, "open")
    assert isinstance(served, Reservation) and not served.held, served
    assert time.monotonic() - started < SLACK
    assert wait.outages == 0
