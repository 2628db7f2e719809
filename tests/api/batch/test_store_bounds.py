"""Every stream, bucket and object store llmq writes has a byte bound and discards new
messages at it (against a real nats-server of the test's own): a full store refuses a write
and keeps everything it holds (queued jobs, live records); an existing unbounded store is
brought to its bound at start; the api refuses new async jobs with a 507 before a store they
write is full."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType
from nats.js.errors import APIError

from llmq.api.batch import stores
from llmq.api.batch.store_room import FRESH
from llmq.dispatcher import streams
from llmq.dispatcher.connection import connect
from llmq.embedded import EmbeddedNats
from llmq.schemas import names
from llmq.schemas.settings import StorageSettings
from tests.stack import unique, wait_serving

MiB = 1 << 20
SMALL = StorageSettings(
    jobs_stream_max_bytes=2 * MiB,
    batch_stream_max_bytes=MiB,
    usage_stream_max_bytes=3 * MiB,
    outcomes_stream_max_bytes=4 * MiB,
    webhooks_stream_max_bytes=5 * MiB,
    async_jobs_max_bytes=MiB,
    results_max_bytes=6 * MiB,
    batches_max_bytes=7 * MiB,
    file_meta_max_bytes=8 * MiB,
    files_max_total_bytes=9 * MiB,
    responses_max_bytes=10 * MiB,
    conversations_max_bytes=11 * MiB,
    registry_max_bytes=12 * MiB,
)
EXPECTED = {
    names.JOBS_STREAM: 2 * MiB,
    names.BATCH_STREAM: MiB,
    names.USAGE_STREAM: 3 * MiB,
    names.OUTCOMES_STREAM: 4 * MiB,
    names.WEBHOOKS_STREAM: 5 * MiB,
    f"KV_{names.ASYNC_JOBS_BUCKET}": MiB,
    f"KV_{names.RESULTS_BUCKET}": 6 * MiB,
    f"KV_{names.BATCHES_BUCKET}": 7 * MiB,
    f"KV_{names.FILE_META_BUCKET}": 8 * MiB,
    f"OBJ_{names.FILES_OBJECT_STORE}": 9 * MiB,
    f"KV_{names.RESPONSES_BUCKET}": 10 * MiB,
    f"KV_{names.CONVERSATIONS_BUCKET}": 11 * MiB,
}


@pytest.fixture
async def nc(own_nats: EmbeddedNats) -> AsyncIterator[Client]:
    client = await connect(own_nats.url, "test")
    yield client
    await client.close()


async def _provision(js: object, limits: StorageSettings) -> None:
    await streams.ensure_streams(js, 900, limits=limits)  # type: ignore[arg-type]
    await streams.ensure_usage_stream(js, limits=limits)  # type: ignore[arg-type]
    await stores.ensure_batch_streams(js, 3600, limits=limits)  # type: ignore[arg-type]
    await stores.batch_buckets(js, 3600, limits=limits)  # type: ignore[arg-type]
    await stores.files_store(js, limits=limits)  # type: ignore[arg-type]
    await stores.responses_buckets(js, 0, limits=limits)  # type: ignore[arg-type]


async def test_every_store_gets_its_bound_and_discards_new(nc: Client) -> None:
    js = nc.jetstream()
    # An older llmq made this bucket without a bound: provisioning brings it to its bound.
    await js.create_key_value(
        KeyValueConfig(bucket=names.ASYNC_JOBS_BUCKET, history=1, storage=StorageType.FILE)
    )
    await _provision(js, SMALL)
    for stream, bound in EXPECTED.items():
        config = (await js.stream_info(stream)).config
        assert (stream, config.max_bytes) == (stream, bound)
        assert config.discard == DiscardPolicy.NEW, stream
    workers = await streams.workers_bucket(js, 6.0)
    assert (await workers.status()).stream_info.config.max_bytes == 64 * MiB  # the default


async def test_a_full_work_queue_refuses_new_jobs_and_keeps_the_queued_ones(nc: Client) -> None:
    js = nc.jetstream()
    await _provision(js, SMALL)
    subject = names.batch_subject(unique("model"))
    body = b"x" * 100_000
    stored = 0
    with pytest.raises(APIError):
        for _ in range(40):  # 4 MB at 1 MiB: refused long before the end
            await js.publish(subject, body)
            stored += 1
    assert 5 <= stored < 11
    info = await js.stream_info(names.BATCH_STREAM)
    assert info.state.messages == stored  # the first job is still queued: nothing dropped
    assert (await js.get_msg(names.BATCH_STREAM, 1)).data == body


async def test_a_full_bucket_refuses_a_new_record_and_keeps_every_live_one(nc: Client) -> None:
    js = nc.jetstream()
    await _provision(js, SMALL)
    kv = await js.key_value(names.ASYNC_JOBS_BUCKET)
    value = b"r" * 60_000
    keys = []
    with pytest.raises(APIError):
        for i in range(40):
            await kv.create(f"tenant.job{i}", value)
            keys.append(f"tenant.job{i}")
    for key in keys:  # the oldest record (a queued job's, say) is still there
        assert (await kv.get(key)).value == value
    # a live record can still change in place: history 1 keeps one revision per key
    await kv.update(keys[0], b"done", last=(await kv.get(keys[0])).revision)


async def test_the_api_refuses_new_async_jobs_with_507_before_the_store_is_full(
    own_nats: EmbeddedNats, stack
) -> None:  # type: ignore[no-untyped-def]
    stack.nats_url = own_nats.url
    model = unique("echo")
    api = await stack.api(async_jobs_max_bytes=MiB, store_high_water=0.5)
    await stack.worker(model=[model], backend="echo")
    await wait_serving(api.url, model)
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        first = await client.post("/v1/jobs", json=body)
        assert first.status_code in (200, 201, 202), first.text
        job_id = first.json()["id"]
        js = api.runtime.js
        kv = await js.key_value(names.ASYNC_JOBS_BUCKET)
        for i in range(10):  # other records take the bucket past half its bound
            await kv.put(f"filler.f{i}", b"f" * 60_000)
        await asyncio.sleep(FRESH + 0.1)  # the api reads a store's fill once a second
        refused = await client.post("/v1/jobs", json=body)
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["code"] == "storage_full"
        assert "LLMQ_ASYNC_JOBS" in error["message"]
        kept = await client.get(f"/v1/jobs/{job_id}")  # what was accepted is all there
        assert kept.status_code == 200, kept.text


async def test_a_full_interactive_queue_answers_503_queue_full_at_once(
    own_nats: EmbeddedNats, stack
) -> None:  # type: ignore[no-untyped-def]
    stack.nats_url = own_nats.url
    model = unique("echo")
    api = await stack.api(jobs_stream_max_bytes=MiB)
    await stack.worker(model=[model], backend="echo", jobs_stream_max_bytes=MiB)
    await wait_serving(api.url, model)
    js = api.runtime.js
    for size in (100_000, 10_000, 1_000, 100):  # jobs of a model nobody serves fill it
        with pytest.raises(APIError):
            for _ in range(2_000):
                await js.publish(names.jobs_subject("idle"), b"j" * size)
    queued = (await js.stream_info(names.JOBS_STREAM)).state.messages
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        started = asyncio.get_running_loop().time()
        refused = await client.post("/v1/chat/completions", json=body)
        took = asyncio.get_running_loop().time() - started
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert took < 10  # not retried until the request's deadline (120 s)
    assert (await js.stream_info(names.JOBS_STREAM)).state.messages == queued  # none dropped
