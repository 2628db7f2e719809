"""Submitting an async job against a real nats-server while its record's bucket is away (as
while LLMQ_ASYNC_JOBS elects a leader): the job is queued once, the record is retried until
the bucket is back, and a job that was queued is never answered with an error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from llmq.api.batch import stores
from llmq.dispatcher import kv as kvs
from llmq.dispatcher import streams
from llmq.dispatcher.batch.async_jobs import AsyncJobs
from llmq.dispatcher.batch.records import job_decoder, time_hex
from llmq.dispatcher.connection import connect
from llmq.embedded import EmbeddedNats
from llmq.schemas import names
from llmq.schemas.admission import PreparedRequest
from llmq.schemas.openai import chat_request_decoder
from tests.dispatcher.test_batch_collector import Books
from tests.stack import unique, wait_for

BUCKET_STREAM = f"KV_{names.ASYNC_JOBS_BUCKET}"


@pytest.fixture
async def nc(own_nats: EmbeddedNats) -> AsyncIterator[Client]:
    client = await connect(own_nats.url, "test")
    js = client.jetstream()
    await streams.ensure_streams(js, 900)
    await stores.batch_buckets(js, 3600)
    yield client
    await client.close()


async def _jobs(nc: Client, **options: float) -> AsyncJobs:
    js = nc.jetstream()
    buckets = await stores.batch_buckets(js, 3600)
    return AsyncJobs(
        nc,
        js,
        buckets[names.ASYNC_JOBS_BUCKET],
        buckets[names.RESULTS_BUCKET],
        Books(),
        stall=60.0,
        **options,
    )


def _prepared(model: str) -> PreparedRequest:
    body = b'{"model":"%s","messages":[{"role":"user","content":"hi"}]}' % model.encode()
    request = chat_request_decoder.decode(body)
    return PreparedRequest(request, model, body, "chat", False, 1, 16)


async def _queued_once(nc: Client, model: str, job_id: str) -> None:
    js = nc.jetstream()
    subject = names.batch_subject(model)
    info = await js.stream_info(names.BATCH_STREAM, subjects_filter=subject)
    assert (info.state.subjects or {}).get(subject) == 1
    msg = await js.get_last_msg(names.BATCH_STREAM, subject)
    assert (msg.headers or {})["Nats-Msg-Id"] == job_id


async def test_the_record_waits_for_its_bucket(nc: Client) -> None:
    jobs = await _jobs(nc)
    js = nc.jetstream()
    model, job_id = unique("m"), time_hex()
    await js.delete_stream(BUCKET_STREAM)
    submitting = asyncio.create_task(jobs.submit(job_id, "acme", _prepared(model), deadline=600))
    await wait_for(lambda: _has_job(nc, model), timeout=10)  # queued before the record
    await asyncio.sleep(0.5)
    assert not submitting.done()
    await stores.batch_buckets(js, 3600)  # the provisioning brings the bucket back
    record = await asyncio.wait_for(submitting, 20)
    assert record.id == job_id and record.status == "queued"
    found = await kvs.read(jobs.jobs, jobs.key("acme", job_id), job_decoder)
    assert found is not None and found[0].status == "queued"
    await _queued_once(nc, model, job_id)
    await jobs.stop()


async def test_a_queued_job_is_answered_and_recorded_later(nc: Client) -> None:
    """The bucket stays away longer than the request waits: 202 with the record anyway,
    written in the background once the bucket is back."""
    jobs = await _jobs(nc, record_retry=0.5)
    js = nc.jetstream()
    model, job_id = unique("m"), time_hex()
    await js.delete_stream(BUCKET_STREAM)
    started = time.monotonic()
    record = await asyncio.wait_for(jobs.submit(job_id, "acme", _prepared(model), deadline=600), 15)
    assert record.status == "queued" and time.monotonic() - started < 10
    await _queued_once(nc, model, job_id)
    await stores.batch_buckets(js, 3600)

    async def recorded() -> bool:
        return await kvs.read(jobs.jobs, jobs.key("acme", job_id), job_decoder) is not None

    await wait_for(recorded, timeout=20)
    await jobs.stop()


async def _has_job(nc: Client, model: str) -> bool:
    subject = names.batch_subject(model)
    info = await nc.jetstream().stream_info(names.BATCH_STREAM, subjects_filter=subject)
    return bool((info.state.subjects or {}).get(subject))
