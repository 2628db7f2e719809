"""The api's view of the workers through a silence. While the bucket answers, a dead worker
ages out after about one TTL (others beating or not); cut off from it (as while the bucket
elects a leader on a cluster) the view keeps its workers one more TTL. Real nats-server."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from llmq.dispatcher import streams
from llmq.dispatcher.connection import disconnect
from llmq.dispatcher.registry import WorkerRegistry
from llmq.embedded import EmbeddedNats
from llmq.schemas.registry import WorkerInfo, registry_encoder
from tests.stack import wait_for

TTL = 1.0


def _beat(worker_id: str) -> bytes:
    info = WorkerInfo(
        id=worker_id, models=["m"], backend="echo", capacity=1, heartbeat_at=time.time()
    )
    return registry_encoder.encode(info)


@pytest.mark.timeout(60)
async def test_a_cut_off_view_keeps_its_workers_one_more_ttl(own_nats: EmbeddedNats) -> None:
    nc = await nats.connect(own_nats.url)
    kv = await streams.workers_bucket(nc.jetstream(), ttl=30)
    registry = WorkerRegistry(nc.jetstream(), ttl=TTL)
    await registry.start()
    try:
        await kv.put("a", _beat("a"))
        await kv.put("b", _beat("b"))
        await wait_for(lambda: len(registry.workers_for("m")) == 2)

        # Others beat: `b` (silent) ages out after about one TTL, `a` stays.
        started = time.monotonic()
        while time.monotonic() - started < TTL * 1.6:
            await kv.put("a", _beat("a"))
            await asyncio.sleep(0.1)
        assert [w.id for w in registry.workers_for("m")] == ["a"]

        # Nobody beats, the bucket answers: the workers are gone; `a` ages out within ~1.1 TTL.
        last = await kv.get("a")
        await asyncio.sleep(TTL * 0.7)
        assert [w.id for w in registry.workers_for("m")] == ["a"]
        await asyncio.sleep(TTL * 0.7)
        assert registry.workers_for("m") == []
        # A replay of the same entry (a re-opened watch) is no news: still none live.
        registry._on_worker("a", last.value)
        assert registry.workers_for("m") == []

        # Cut off (the server is gone): `a`, fresh when it went, outlives its TTL, gone after two.
        await kv.put("a", _beat("a"))
        await wait_for(lambda: len(registry.workers_for("m")) == 1)
        own_nats.kill()
        await asyncio.sleep(TTL * 1.5)
        assert [w.id for w in registry.workers_for("m")] == ["a"]
        await asyncio.sleep(TTL * 0.8)
        assert registry.workers_for("m") == []
    finally:
        await registry.stop()
        await disconnect(nc)
