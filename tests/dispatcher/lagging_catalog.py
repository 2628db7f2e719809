"""A worker registry whose models' watch lags the workers' one, on a real nats-server: the
catalog entries and a worker's first heartbeat are written as a worker writes them (entries
first), and the watch that would deliver the entries is stopped, so only `load_catalog`
reads them (tests of the registry and of what relies on its on-demand read)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats

from llmq.dispatcher import streams
from llmq.dispatcher.connection import disconnect
from llmq.dispatcher.registry import WorkerRegistry
from llmq.schemas import names
from llmq.schemas.registry import ModelInfo, WorkerInfo, registry_encoder
from tests.stack import wait_for


@asynccontextmanager
async def lagging_catalog(
    nats_url: str, entries: list[ModelInfo], served: list[str]
) -> AsyncIterator[WorkerRegistry]:
    """A started registry that has seen worker `w` (serving `served`) beat, and none of
    `entries`, which are in the catalog bucket."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    workers = await streams.workers_bucket(js, ttl=30)
    catalog = await streams.models_bucket(js)
    registry = WorkerRegistry(js, ttl=30)
    await registry.start()
    try:
        await registry.synced.wait()
        await registry._followers[1].stop()  # the models' watch lags: it delivers nothing
        for entry in entries:
            await catalog.put(names.model_kv_key(entry.name), registry_encoder.encode(entry))
        beat = WorkerInfo(id="w", backend="openai", models=served, capacity=1)
        beat.heartbeat_at = time.time()
        await workers.put("w", registry_encoder.encode(beat))  # as a worker: entries first
        await wait_for(lambda: registry.workers_for(served[0]))
        yield registry
    finally:
        await registry.stop()
        await disconnect(nc)
