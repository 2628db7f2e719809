"""The api's view of the workers through a silence: cut off from LLMQ_WORKERS (as while the
bucket elects a leader on a cluster) it keeps its workers one more TTL; while others beat, a
dead worker ages out after one TTL as before. Real nats-server, real bucket."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from llmq.dispatcher import streams
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

        # Nobody beats (the view is cut off): `a` outlives its TTL, then goes after two.
        await asyncio.sleep(TTL * 1.5)
        assert [w.id for w in registry.workers_for("m")] == ["a"]
        await asyncio.sleep(TTL * 0.8)
        assert registry.workers_for("m") == []

        # A replay of the same entries (a re-opened watch) is no news: still none live.
        registry._on_worker("a", (await kv.get("a")).value)
        assert registry.workers_for("m") == []
    finally:
        await registry.stop()
        await nc.close()
