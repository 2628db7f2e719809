"""The batch store and the lease on a real nats-server: one owner at a time, renewal by
writing, handing back, and a write that finds another owner loses the lease."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import KeyValueConfig, StorageType

from llmq.dispatcher.batch import lease
from llmq.dispatcher.batch.records import BatchRecord, time_hex
from llmq.dispatcher.batch.store import BatchStore, batch_key
from llmq.dispatcher.connection import connect
from tests.stack import unique


async def _store(url: str):  # type: ignore[no-untyped-def]
    nc = await connect(url, "test")
    name = unique("B")
    kv = await nc.jetstream().create_key_value(
        KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE)
    )
    return nc, BatchStore(kv)


def _record(tenant: str) -> BatchRecord:
    now = int(time.time())
    return BatchRecord(
        id=time_hex(),
        tenant=tenant,
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        created_at=now,
        expires_at=now + 3600,
    )


async def test_store_create_get_list_cancel(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc, store = await _store(nats_server.url)
    try:
        first, second = _record("acme"), _record("acme")
        await store.create(first)
        await store.create(second)
        await store.create(_record("other"))
        assert (await store.get("acme", first.id)) == first
        assert await store.get("other", first.id) is None  # another tenant's key
        newest_first = sorted([first.id, second.id], reverse=True)  # ids are time-ordered
        assert await store.ids("acme") == newest_first
        cancelled = await store.cancel("acme", first.id)
        assert cancelled is not None and cancelled.status == "cancelling"
        again = await store.cancel("acme", first.id)  # past cancelling: left as it is
        assert again is not None and again.cancelling_at == cancelled.cancelling_at
        assert await store.cancel("acme", time_hex()) is None
    finally:
        await nc.close()


async def test_one_owner_renew_hand_back_and_lose(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc, store = await _store(nats_server.url)
    try:
        record = _record("acme")
        await store.create(record)
        key = batch_key("acme", record.id)
        taken = await lease.take(store, key, "a", 30.0)
        assert taken is not None and taken[0].owner == "a"
        assert await lease.take(store, key, "b", 30.0) is None  # a holds it
        held = lease.Lease(store, key, taken[0], taken[1], "a", seconds=30.0)

        def progress(r: BatchRecord) -> BatchRecord:
            r.dispatched = 5
            return r

        written = await held.write(progress)
        assert written.dispatched == 5 and written.lease_until > time.time() + 29
        await lease.hand_back(store, key, "a")
        taken_b = await lease.take(store, key, "b", 30.0)
        assert taken_b is not None and taken_b[0].owner == "b"
        with pytest.raises(lease.LeaseLost):
            await held.write(progress)  # finds b's record: a stops at once
    finally:
        await nc.close()


async def test_an_expired_lease_is_taken_and_keep_cancels_the_holder(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc, store = await _store(nats_server.url)
    try:
        record = _record("acme")
        await store.create(record)
        key = batch_key("acme", record.id)
        taken = await lease.take(store, key, "a", 0.3)
        assert taken is not None
        held = lease.Lease(store, key, taken[0], taken[1], "a", seconds=0.3)
        await asyncio.sleep(0.4)  # a stopped renewing: the lease ran out
        assert await lease.take(store, key, "b", 30.0) is not None
        holder = asyncio.create_task(asyncio.sleep(30))
        await held.keep(holder)  # its first renewal finds b: a's run is cancelled
        with pytest.raises(asyncio.CancelledError):
            await holder
    finally:
        await nc.close()
