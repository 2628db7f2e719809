"""`LLMQ_NATS_REPLICAS` on a real 3-node nats-server cluster: everything llmq creates has
that many copies, and a deployment made with one copy is brought to three in place."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from llmq.dispatcher import streams
from llmq.embedded import EmbeddedNats, cluster_url
from llmq.schemas import names
from llmq.schemas.settings import Settings


async def _ready(js: JetStreamContext, timeout: float = 60.0) -> None:
    """A fresh cluster serves JetStream once it has a meta leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await js.account_info()
            await streams.ensure_streams(js, 900, replicas=3)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture
async def cluster_js(own_nats_cluster: list[EmbeddedNats]) -> AsyncIterator[JetStreamContext]:
    nc: Client = await nats.connect(servers=cluster_url(own_nats_cluster).split(","))
    js = nc.jetstream()
    await _ready(js)
    yield js
    await nc.close()


async def _all_streams(js: JetStreamContext) -> dict[str, int]:
    return {info.config.name: info.config.num_replicas or 1 for info in await js.streams_info()}


def test_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().protocol.nats_replicas == 1
    monkeypatch.setenv("LLMQ_NATS_REPLICAS", "3")
    assert Settings().protocol.nats_replicas == 3
    monkeypatch.setenv("LLMQ_NATS_REPLICAS", "0")
    with pytest.raises(ValueError):
        Settings()


async def test_api_and_worker_create_everything_with_three_replicas(
    own_nats_cluster: list[EmbeddedNats], cluster_js: JetStreamContext, stack: Any
) -> None:
    """Every stream, bucket, object store and consumer that a running api (with its batch
    machinery) and worker create on the cluster has 3 replicas: none was missed."""
    await streams.ensure_streams(cluster_js, 900, replicas=1)  # as an R1 deployment left it
    stack.nats_url = cluster_url(own_nats_cluster)
    await stack.api(nats_replicas=3)
    await stack.worker(model=["r3-model"], nats_replicas=3)
    found = await _all_streams(cluster_js)
    expected = {
        names.JOBS_STREAM, names.BATCH_STREAM, names.OUTCOMES_STREAM, names.WEBHOOKS_STREAM,
        f"KV_{names.WORKERS_BUCKET}", f"KV_{names.MODELS_BUCKET}", f"KV_{names.RESULTS_BUCKET}",
        f"KV_{names.ASYNC_JOBS_BUCKET}", f"KV_{names.BATCHES_BUCKET}",
        f"KV_{names.FILE_META_BUCKET}", f"OBJ_{names.FILES_OBJECT_STORE}",
    }  # fmt: skip
    assert expected <= set(found)
    assert {name: n for name, n in found.items() if n != 3} == {}
    for stream in found:
        for consumer in await cluster_js.consumers_info(stream):
            if consumer.config.durable_name:  # ephemeral watchers live with their client
                assert consumer.config.num_replicas == 3, (stream, consumer.name)
    jobs = await cluster_js.stream_info(names.JOBS_STREAM)
    assert jobs.cluster is not None and len(jobs.cluster.replicas or []) == 2


async def test_one_replica_is_raised_to_three_in_place(cluster_js: JetStreamContext) -> None:
    """An R1 deployment keeps its data when the setting goes from 1 to 3."""
    await streams.ensure_batch_streams(cluster_js, 3600, replicas=1)
    buckets = await streams.batch_buckets(cluster_js, 3600, replicas=1)
    store = await streams.files_store(cluster_js, replicas=1)
    consumer = await streams.ensure_consumer(cluster_js, names.BATCH_STREAM, "m", 10, 3, replicas=1)
    await buckets[names.BATCHES_BUCKET].put("kept", b"yes")
    await store.put("kept-file", b"content")
    await cluster_js.publish(names.batch_subject("m"), b"job", headers={"Nats-Msg-Id": "j1"})
    assert (await _all_streams(cluster_js))[f"KV_{names.BATCHES_BUCKET}"] == 1

    await streams.ensure_streams(cluster_js, 900, replicas=3)
    await streams.ensure_batch_streams(cluster_js, 3600, replicas=3)
    buckets = await streams.batch_buckets(cluster_js, 3600, replicas=3)
    store = await streams.files_store(cluster_js, replicas=3)
    await streams.ensure_consumer(cluster_js, names.BATCH_STREAM, "m", 10, 3, replicas=3)

    found = await _all_streams(cluster_js)
    assert {name: n for name, n in found.items() if n != 3} == {}
    assert (await cluster_js.consumer_info(names.BATCH_STREAM, consumer)).config.num_replicas == 3
    assert (await buckets[names.BATCHES_BUCKET].get("kept")).value == b"yes"
    assert (await store.get("kept-file")).data == b"content"
    assert (await cluster_js.stream_info(names.BATCH_STREAM)).state.messages == 1
