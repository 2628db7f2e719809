"""The api's view of the model catalog when its watch lags the workers' one: a model whose
worker is seen has its catalog entry read from the bucket (`load_catalog`), since a worker
writes its entries before its first heartbeat; a name no live worker serves costs no read.
Real nats-server."""

from __future__ import annotations

import time

import pytest

from llmq.embedded import EmbeddedNats
from llmq.schemas.registry import ModelInfo
from tests.dispatcher.lagging_catalog import lagging_catalog


@pytest.mark.timeout(60)
async def test_a_served_model_missing_from_the_watch_is_read(own_nats: EmbeddedNats) -> None:
    entries = [
        ModelInfo(name=model, first_seen=time.time(), endpoints=["/v1/moderations"])
        for model in ("served", "idle")
    ]
    async with lagging_catalog(own_nats.url, entries, ["served"]) as registry:
        assert registry.model_info("served") is None

        await registry.load_catalog(["served", "idle", "nobody"])
        info = registry.model_info("served")
        assert info is not None and info.endpoints == ["/v1/moderations"]
        assert info.first_seen > 0
        # No live worker serves `idle`: its entry is not read (nor any made-up name's).
        assert registry.model_info("idle") is None
        assert registry.model_info("nobody") is None
