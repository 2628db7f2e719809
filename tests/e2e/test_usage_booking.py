"""Usage is booked from the worker's final report even when the api that relayed the job is
gone (issue 12 finding 13), and exactly once when it is not. Real nats-server and Valkey,
the api that dies is a real OS process killed with SIGKILL mid-stream, the client is the
openai SDK."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
from redis.asyncio import Redis

from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from llmq.api.usage_booking import FAILED_GRACE
from llmq.schemas import names
from llmq.schemas.admission import JobUsage, Reservation
from llmq.schemas.usage import FinalUsage, usage_encoder
from tests.spec import assert_valid
from tests.stack import unique, wait_for

CLOCKS = 0.1
"""The grace is counted from the message's JetStream timestamp (nats-server's wall clock),
this test's from `time.monotonic()` just before the publish: they may differ this much."""

WORDS = 60
"""Echoed at 0.05 s a word: a stream of about 3 s."""


async def _tenant(redis: Redis) -> tuple[str, str]:
    store = TenantStore(redis)
    name = unique("t")
    await store.create(Tenant(name=name, max_concurrent=4))
    key, _ = await store.create_key(name)
    return name, key


async def _serving(base: str, key: str, model: str) -> None:
    async def ready() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                resp = await client.get(
                    f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}
                )
        except httpx.HTTPError:
            return False
        return resp.status_code == 200 and model in {m["id"] for m in resp.json()["data"]}

    await wait_for(ready, timeout=30)


def _text(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


async def test_usage_is_booked_once_when_the_api_dies_mid_stream(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("u")
    redis = connect(redis_server.url)
    tenant, key = await _tenant(redis)
    survivor = await stack.api(auth_mode="keys", key_cache_ttl=0)
    doomed = await stack.api_process(auth_mode="keys", key_cache_ttl=0)
    await stack.worker(model=[model], capacity=2, echo_delay=0.05)
    base = doomed.url
    await _serving(base, key, model)
    sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)
    messages: Any = [{"role": "user", "content": _text(WORDS)}]
    seen = 0
    async with sdk.chat.completions.with_streaming_response.create(
        model=model, messages=messages, stream=True
    ) as response:
        job_id = response.headers["x-request-id"]
        async for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            # The worker's chunks carry `"system_fingerprint": null` (a string in the spec):
            # a worker-fidelity defect reported separately, not what this test is about.
            if chunk.get("system_fingerprint", "") is None:
                del chunk["system_fingerprint"]
            assert_valid("CreateChatCompletionStreamResponse", chunk)
            seen += 1
            if seen == 3:
                doomed.kill()  # the api dies mid-stream; the worker generates to the end
                break
    await sdk.close()
    reader = UsageReader(redis)

    async def booked() -> bool:
        return bool(await reader.ledger(tenant))

    await wait_for(booked, timeout=30)
    # The survivor books it from the worker's report; its own relayed jobs book twice over
    # (the done frame and the report) yet appear once.
    own = openai.AsyncOpenAI(base_url=f"{survivor.url}/v1", api_key=key, max_retries=0)
    reply = await own.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "a b c"}]
    )
    assert reply.http_response.json()["choices"][0]["message"]["content"] == "a b c"
    other_id = reply.headers["x-request-id"]
    await own.close()
    await wait_for(lambda: survivor.app.state.usage_booker.booked >= 2, timeout=15)
    await asyncio.sleep(0.5)  # a second booking would show up now
    ledger = await reader.ledger(tenant)
    assert sorted((e.job_id, e.status) for e in ledger) == sorted(
        [(job_id, "ok"), (other_id, "ok")]
    )
    entry = next(e for e in ledger if e.job_id == job_id)
    assert entry.completion_tokens == WORDS and entry.prompt_tokens > 0
    (row,) = await reader.usage(tenant, days=1)
    assert (row.model, row.requests, row.failed) == (model, 2, 0)
    assert row.completion_tokens == WORDS + 3
    assert await Quota(redis).inflight(tenant) == 0
    await redis.aclose()


async def test_a_failed_report_waits_for_the_relaying_api_and_a_garbled_one_is_dropped(
    stack, redis_server
) -> None:  # type: ignore[no-untyped-def]
    """A failed job's report is booked only after a grace period (the api that relayed it,
    when alive, books its own estimate first); an unreadable report is dropped, not
    redelivered forever."""
    redis = connect(redis_server.url)
    tenant, _ = await _tenant(redis)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    reservations = api.app.state.serving.reservations
    held = await reservations.reserve(tenant, "m", 10, 20, "failing-job")
    assert isinstance(held, Reservation)
    subject = names.usage_subject(tenant, "m")
    await api.runtime.nc.publish(subject, b"\xff not json")
    report = FinalUsage(tenant, "m", "failing-job", 4, 2, failed=True)
    published = time.monotonic()
    await api.runtime.js.publish(subject, usage_encoder.encode(report))
    assert await Quota(redis).inflight(tenant) == 1
    # this job's booking frees its slot (the booker's count may include reports left in the
    # shared stream by earlier tests on the same nats-server)
    quota = Quota(redis)
    await wait_for(lambda: _inflight_none(quota, tenant), timeout=15)
    # not before its grace period: measured from the publish, so a slow machine (which only
    # makes the booking later) cannot fail it, and a booking that came early always does
    assert time.monotonic() - published >= FAILED_GRACE - CLOCKS, time.monotonic() - published
    (entry,) = await UsageReader(redis).ledger(tenant)
    assert (entry.job_id, entry.status, entry.completion_tokens) == ("failing-job", "failed", 2)
    assert await Quota(redis).inflight(tenant) == 0
    info = await api.runtime.js.stream_info(names.USAGE_STREAM)
    await wait_for(lambda: _empty(api), timeout=10)
    assert info.config.max_age
    await redis.aclose()


async def _inflight_none(quota: Quota, tenant: str) -> bool:
    return await quota.inflight(tenant) == 0


async def _empty(api: Any) -> bool:
    info = await api.runtime.js.stream_info(names.USAGE_STREAM)
    return bool(info.state.messages == 0)


async def test_a_report_of_a_job_this_api_released_costs_no_second_release(
    stack, redis_server
) -> None:  # type: ignore[no-untyped-def]
    """The api that relayed a job released it already: the worker's report of it is acked
    without a Redis call (`skipped`); a report of a job nobody here released is booked."""
    redis = connect(redis_server.url)
    tenant, _ = await _tenant(redis)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    reservations = api.app.state.serving.reservations
    booker = api.app.state.usage_booker
    mine = await reservations.reserve(tenant, "m", 10, 20, "mine")
    assert isinstance(mine, Reservation)
    await reservations.release(mine, JobUsage(3, 5))
    assert reservations.released_here("mine")
    held = await reservations.reserve(tenant, "m", 10, 20, "other")  # its api never ends it
    assert isinstance(held, Reservation) and not reservations.released_here("other")
    skipped, booked = booker.skipped, booker.booked
    subject = names.usage_subject(tenant, "m")
    for job_id in ("mine", "other"):
        report = FinalUsage(tenant, "m", job_id, 3, 5)
        await api.runtime.js.publish(subject, usage_encoder.encode(report))
    await wait_for(lambda: booker.booked >= booked + 2, timeout=15)
    assert booker.skipped == skipped + 1
    entries = await UsageReader(redis).ledger(tenant)
    assert sorted((e.job_id, e.completion_tokens) for e in entries) == [("mine", 5), ("other", 5)]
    assert await Quota(redis).inflight(tenant) == 0
    await redis.aclose()
