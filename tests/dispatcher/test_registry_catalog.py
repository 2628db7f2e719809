"""The api's view of the model catalog when its watch lags the workers' one: a model whose
worker is seen has its catalog entry read from the bucket (`load_catalog`), since a worker
writes its entries before its first heartbeat; a name no live worker serves costs no read.
Real nats-server."""

from __future__ import annotations

import time

import nats
import pytest

from llmq.dispatcher import streams
from llmq.dispatcher.connection import disconnect
from llmq.dispatcher.registry import WorkerRegistry
from llmq.embedded import EmbeddedNats
from llmq.schemas import names
from llmq.schemas.registry import ModelInfo, WorkerInfo, registry_encoder
from tests.stack import wait_for


@pytest.mark.timeout(60)
async def test_a_served_model_missing_from_the_watch_is_read(own_nats: EmbeddedNats) -> None:
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    workers = await streams.workers_bucket(js, ttl=30)
    catalog = await streams.models_bucket(js)
    registry = WorkerRegistry(js, ttl=30)
    await registry.start()
    try:
        await registry.synced.wait()
        await registry._followers[1].stop()  # the models' watch lags: it delivers nothing
        for model in ("served", "idle"):
            entry = ModelInfo(name=model, first_seen=time.time(), endpoints=["/v1/moderations"])
            await catalog.put(names.model_kv_key(model), registry_encoder.encode(entry))
        beat = WorkerInfo(id="w", backend="openai", models=["served"], capacity=1)
        beat.heartbeat_at = time.time()
        await workers.put("w", registry_encoder.encode(beat))  # as a worker: entries first
        await wait_for(lambda: registry.workers_for("served"))
        assert registry.model_info("served") is None

        await registry.load_catalog(["served", "idle", "nobody"])
        info = registry.model_info("served")
        assert info is not None and info.endpoints == ["/v1/moderations"]
        assert info.first_seen > 0
        # No live worker serves `idle`: its entry is not read (nor any made-up name's).
        assert registry.model_info("idle") is None
        assert registry.model_info("nobody") is None
    finally:
        await registry.stop()
        await disconnect(nc)
