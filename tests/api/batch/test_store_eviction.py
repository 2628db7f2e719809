"""A store that fills makes room: the oldest finished async jobs and batches go first, with
their results; queued and running ones are never touched; a store full of live work still
answers 507 (against a real nats-server of the test's own, and an api with an echo worker)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from llmq.api.batch import stores
from llmq.api.batch.eviction import BATCHES, JOBS, RESULTS, Evictor
from llmq.api.batch.store_room import FRESH, StoreRoom, fill_of
from llmq.dispatcher.batch.records import (
    BatchRecord,
    JobRecord,
    encoder,
    time_hex,
    unrun,
)
from llmq.dispatcher.connection import connect
from llmq.dispatcher.dispatch import DispatchError
from llmq.embedded import EmbeddedNats
from llmq.schemas import names
from llmq.schemas.settings import StorageSettings
from tests.stack import unique, wait_for, wait_serving

MiB = 1 << 20
SMALL = StorageSettings(async_jobs_max_bytes=MiB, results_max_bytes=MiB, batches_max_bytes=MiB)
TENANT = names.tenant_token("t~1")
ENDS = itertools.count(int(time.time()) - 100_000)
"""End times, one second apart, in the order the records are written (whole seconds are all a
batch record keeps)."""
PAD = 40_000
"""Bytes of each record or result here: about 26 fill a 1 MiB bucket."""


@pytest.fixture
async def js(own_nats: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    client: Client = await connect(own_nats.url, "test")
    js = client.jetstream()
    await stores.batch_buckets(js, 3600, limits=SMALL)
    yield js
    await client.close()


async def _job(js: JetStreamContext, status: str) -> str:
    """A job record of `status` with a result once final, each about PAD bytes."""
    now = time.time()
    job = JobRecord(
        id=time_hex(),
        tenant="t~1",
        model="m",
        status=status,  # type: ignore[arg-type]
        created_at=now,
        expires_at=now + 3600,
        ended_at=float(next(ENDS)) if status == "completed" else None,
        metadata={"pad": "j" * PAD},
    )
    if status == "completed":
        results = await js.key_value(names.RESULTS_BUCKET)
        await results.create(names.job_results_key(job.id), unrun("x", "r" * PAD))
    jobs = await js.key_value(names.ASYNC_JOBS_BUCKET)
    await jobs.create(f"{TENANT}.{job.id}", encoder.encode(job))
    return job.id


async def _batch(js: JetStreamContext, status: str, lines: int = 2) -> str:
    """A batch record of `status` with `lines` line results of about PAD bytes each."""
    now = int(time.time())
    batch = BatchRecord(
        id=time_hex(),
        tenant="t~1",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        status=status,  # type: ignore[arg-type]
        created_at=now,
        expires_at=now + 86_400,
        completed_at=next(ENDS) if status == "completed" else None,
        owner="elsewhere" if status == "in_progress" else "",
        lease_until=now + 86_400.0 if status == "in_progress" else 0.0,
    )
    results = await js.key_value(names.RESULTS_BUCKET)
    for n in range(1, lines + 1):
        await results.create(names.line_results_key(batch.id, n), unrun("x", "l" * PAD))
    batches = await js.key_value(names.BATCHES_BUCKET)
    await batches.create(f"{TENANT}.{batch.id}", encoder.encode(batch))
    return batch.id


async def _has(js: JetStreamContext, bucket: str, key: str) -> bool:
    try:
        await (await js.key_value(bucket)).get(key)
    except KeyNotFoundError:
        return False
    return True


async def test_a_full_job_bucket_loses_its_oldest_finished_jobs_and_keeps_the_running(
    js: JetStreamContext,
) -> None:
    running = [await _job(js, "queued"), await _job(js, "in_progress")]  # the oldest of all
    finished = [await _job(js, "completed") for _ in range(20)]
    assert await fill_of(js, JOBS) > 0.75
    evictor = Evictor(js, water=0.5)
    await evictor.make_room(JOBS, within=30)
    assert await fill_of(js, JOBS) < 0.5
    for job_id in running:
        assert await _has(js, names.ASYNC_JOBS_BUCKET, f"{TENANT}.{job_id}")
    kept = [await _has(js, names.ASYNC_JOBS_BUCKET, f"{TENANT}.{j}") for j in finished]
    gone = kept.index(True)
    assert gone >= 5 and all(kept[gone:]) and not any(kept[:gone])  # oldest first, newest kept
    for i, job_id in enumerate(finished):  # a job's result goes with its record
        assert await _has(js, names.RESULTS_BUCKET, names.job_results_key(job_id)) == kept[i]
    assert evictor.evicted["jobs"] == gone


async def test_full_results_lose_the_oldest_finished_jobs_and_batches_never_running_lines(
    js: JetStreamContext,
) -> None:
    running = await _batch(js, "in_progress", lines=4)
    old_batch = await _batch(js, "completed")
    old_job = await _job(js, "completed")
    newer = [await _batch(js, "completed") for _ in range(6)]
    new_job = await _job(js, "completed")
    assert await fill_of(js, RESULTS) > 0.75
    await Evictor(js, water=0.5).make_room(RESULTS, within=30)
    assert await fill_of(js, RESULTS) < 0.5
    for n in range(1, 5):  # a running batch's lines are all there
        assert await _has(js, names.RESULTS_BUCKET, names.line_results_key(running, n))
    assert await _has(js, names.BATCHES_BUCKET, f"{TENANT}.{running}")
    assert not await _has(js, names.BATCHES_BUCKET, f"{TENANT}.{old_batch}")
    assert not await _has(js, names.RESULTS_BUCKET, names.line_results_key(old_batch, 1))
    assert not await _has(js, names.RESULTS_BUCKET, names.job_results_key(old_job))
    assert await _has(js, names.BATCHES_BUCKET, f"{TENANT}.{newer[-1]}")
    assert await _has(js, names.RESULTS_BUCKET, names.line_results_key(newer[-1], 2))
    assert await _has(js, names.RESULTS_BUCKET, names.job_results_key(new_job))


async def test_a_request_that_finds_the_store_full_makes_room_instead_of_a_507(
    js: JetStreamContext,
) -> None:
    running = await _job(js, "in_progress")
    finished = [await _job(js, "completed") for _ in range(22)]
    assert await fill_of(js, JOBS) > 0.8
    evictor = Evictor(js, water=0.5)
    await StoreRoom(js, 0.8, evictor.make_room).check(JOBS, RESULTS)  # no 507
    assert await fill_of(js, JOBS) < 0.5
    assert 0 < evictor.evicted["jobs"] < len(finished)
    assert await _has(js, names.ASYNC_JOBS_BUCKET, f"{TENANT}.{running}")
    assert not await _has(js, names.ASYNC_JOBS_BUCKET, f"{TENANT}.{finished[0]}")
    assert await _has(js, names.ASYNC_JOBS_BUCKET, f"{TENANT}.{finished[-1]}")


async def test_a_store_full_of_running_work_still_answers_507(js: JetStreamContext) -> None:
    for _ in range(5):
        await _batch(js, "in_progress", lines=4)
    running = await fill_of(js, RESULTS)
    assert running > 0.75
    evictor = Evictor(js, water=0.5)
    room = StoreRoom(js, 0.7, evictor.make_room)
    with pytest.raises(DispatchError) as refused:
        await room.check(RESULTS)
    assert (refused.value.status, refused.value.code) == (507, "storage_full")
    assert await fill_of(js, RESULTS) == running  # nothing was deleted
    assert evictor.evicted == {"jobs": 0, "batches": 0}
    await evictor.make_room(BATCHES, within=5)  # nor from the batch records
    assert evictor.evicted == {"jobs": 0, "batches": 0}


async def test_the_api_makes_room_for_a_new_job_and_serves_the_newer_results(
    own_nats: EmbeddedNats, stack
) -> None:  # type: ignore[no-untyped-def]
    """Finished jobs fill LLMQ_ASYNC_JOBS past the 507 mark (the evictor of every api makes
    room in the background too): a new job is accepted, the oldest finished jobs are gone
    (404), a running one and the newer ones are kept."""
    stack.nats_url = own_nats.url
    model = unique("echo")
    api = await stack.api(
        async_jobs_max_bytes=MiB,
        store_high_water=0.6,
        store_evict_water=0.4,
        batch_stall=3600,  # the running record written here has no job behind it
    )
    await stack.worker(model=[model], backend="echo")
    await wait_serving(api.url, model)
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:

        async def finished(job_id: str) -> bool:
            answer = await client.get(f"/v1/jobs/{job_id}")
            return answer.json()["status"] == "completed"

        oldest = []
        for _ in range(2):
            created = await client.post("/v1/jobs", json=body)
            assert created.status_code == 202, created.text
            oldest.append(created.json()["id"])
        for job_id in oldest:
            await wait_for(lambda j=job_id: finished(j), timeout=30)  # type: ignore[misc]
        js = api.runtime.js
        running = await _job(js, "in_progress")
        newer = [await _job(js, "completed") for _ in range(18)]  # past 0.6 of 1 MiB
        await asyncio.sleep(FRESH + 0.1)  # the api reads a store's fill once a second
        accepted = await client.post("/v1/jobs", json=body)
        assert accepted.status_code == 202, accepted.text
        await wait_for(lambda: finished(accepted.json()["id"]), timeout=30)
        for job_id in oldest:
            gone = await client.get(f"/v1/jobs/{job_id}")
            assert gone.status_code == 404, gone.text
        assert await _has(js, names.ASYNC_JOBS_BUCKET, f"{TENANT}.{running}")
        assert await _has(js, names.ASYNC_JOBS_BUCKET, f"{TENANT}.{newer[-1]}")
        assert await _has(js, names.RESULTS_BUCKET, names.job_results_key(newer[-1]))
        assert await fill_of(js, JOBS) < 0.6
