"""OpenAI's other endpoints through the queue to an `openai` worker that declares them:
moderations (JSON, usage booked), streamed binary speech, a multipart transcription passed
through byte for byte, rerank; a model that does not declare the endpoint is a 404
`model_not_found`; the hostile ones — a 100 MB audio upload, a multipart body of 10,000
parts — are 4xx and use no quota; a tenant's model list holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from llmq.api.tenancy import Tenant, TenantStore, UsageReader, connect
from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import FakeUpstream, Reply, json_reply

CATEGORIES = [
    "hate", "hate/threatening", "harassment", "harassment/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
]  # fmt: skip
MODERATION = {
    "id": "modr-1", "model": "omni-moderation-latest",
    "results": [{"flagged": False, "categories": dict.fromkeys(CATEGORIES, False),
                 "category_scores": dict.fromkeys(CATEGORIES, 0.01),
                 "category_applied_input_types": {c: ["text"] for c in CATEGORIES}}],
}  # fmt: skip
AUDIO = [b"ID3\x00\x01", bytes(range(256)) * 64, b"\xff\xfb tail"]
ENDPOINTS = ["/v1/moderations", "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/rerank"]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        server.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        server.route("/v1/moderations", json_reply(200, MODERATION))
        server.route("/v1/audio/speech", Reply(chunks=AUDIO, content_type="audio/mpeg", gap=0.05))
        server.route("/v1/audio/transcriptions", json_reply(200, {"text": "hello world"}))
        server.route("/v1/rerank", json_reply(200, {
            "id": "rr", "results": [{"index": 1, "relevance_score": 0.9}],
            "usage": {"prompt_tokens": 12, "total_tokens": 12}}))  # fmt: skip
        yield server


@pytest.fixture
async def served(stack, redis_server, upstream):  # type: ignore[no-untyped-def]
    model, plain = unique("omni"), unique("chat")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = unique("t")
    await store.create(Tenant(name=tenant))
    key = (await store.create_key(tenant))[0]
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, max_body_bytes=2_000_000)
    worker = await stack.worker(
        model=[model],
        backend="openai",
        backend_url=f"{upstream.url}/v1",
        openai_endpoints=ENDPOINTS,
    )
    await stack.worker(model=[plain])
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
    await wait_for(lambda: api.runtime.registry.workers_for(plain))
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api.url, timeout=20, headers=headers) as http:
        yield model, plain, http, api, key, (redis, tenant)
    await redis.aclose()


async def test_moderations_and_rerank_through_the_sdk(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, _plain, http, api, key, (redis, tenant) = served
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    moderation = await client.moderations.create(model=model, input="is this fine?")
    assert moderation.id == "modr-1" and moderation.results[0].flagged is False
    raw = await http.post("/v1/moderations", json={"model": model, "input": "again"})
    assert raw.json() == MODERATION  # relayed as it came
    assert_valid("CreateModerationResponse", raw.json())
    assert upstream.received[-2].json() == {"model": model, "input": "is this fine?"}
    await client.close()
    reranked = await http.post(
        "/v1/rerank", json={"model": model, "query": "q", "documents": ["a", "b"]}
    )
    assert reranked.status_code == 200 and reranked.json()["results"][0]["index"] == 1
    assert reranked.headers["x-request-id"]

    async def booked() -> bool:
        rows = [r for r in await UsageReader(redis).usage(tenant, days=1) if r.model == model]
        return bool(rows) and rows[0].requests == 3 and rows[0].prompt_tokens == 12

    await wait_for(booked)


async def test_speech_streams_binary_as_it_came(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, _plain, _http, api, key, _ = served
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    async with client.audio.speech.with_streaming_response.create(
        model=model, voice="alloy", input="hello"
    ) as speech:
        assert speech.headers["content-type"] == "audio/mpeg"
        pieces = [piece async for piece in speech.iter_bytes()]
    assert b"".join(pieces) == b"".join(AUDIO)
    await client.close()


async def test_a_multipart_transcription_passes_byte_for_byte(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, _plain, _http, api, key, _ = served
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    audio = b"RIFF\x00\x00WAVEfmt " + bytes(range(256)) * 8
    text = await client.audio.transcriptions.create(model=model, file=("a.wav", audio))
    assert text.text == "hello world"
    sent = upstream.last
    assert sent.path == "/v1/audio/transcriptions"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert audio in sent.body and f'name="model"\r\n\r\n{model}'.encode() in sent.body
    await client.close()


async def test_other_models_and_paths_are_404(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, plain, http, *_ = served
    for path, body in (
        ("/v1/moderations", {"model": plain, "input": "x"}),
        ("/v1/images/generations", {"model": model, "prompt": "a cat"}),  # not declared
        ("/v1/moderations", {"model": "nobody", "input": "x"}),
    ):
        resp = await http.post(path, json=body)
        assert resp.status_code == 404, (path, body, resp.text)
        assert resp.json()["error"]["code"] == "model_not_found"
    bad = await http.post("/v1/moderations", json={"input": "no model"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"


async def test_hostile_bodies_are_4xx_and_use_no_quota(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, _plain, http, _api, _key, (redis, tenant) = served
    asked = len(upstream.received)
    big = b"\x00" * (100 * 1024 * 1024)
    files: dict[str, Any] = {"file": ("big.wav", big, "audio/wav")}
    huge = await http.post("/v1/audio/transcriptions", data={"model": model}, files=files)
    assert huge.status_code == 413
    boundary = "b0undary"
    parts = "".join(
        f'--{boundary}\r\ncontent-disposition: form-data; name="f{i}"\r\n\r\nx\r\n'
        for i in range(10_000)
    )
    body = (f'--{boundary}\r\ncontent-disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            + parts + f"--{boundary}--\r\n").encode()  # fmt: skip
    many = await http.post(
        "/v1/audio/transcriptions", content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert many.status_code == 400 and "parts" in many.json()["error"]["message"]
    assert len(upstream.received) == asked
    assert await UsageReader(redis).usage(tenant, days=1) == []


async def test_a_batch_of_moderations(served, upstream) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import json
    import time

    model, plain, _http, api, key, _ = served
    lines = [
        {"custom_id": f"m{i}", "method": "POST", "url": "/v1/moderations",
         "body": {"model": model, "input": f"text {i}"}}
        for i in range(3)
    ]  # fmt: skip
    lines.append(
        {"custom_id": "other", "url": "/v1/moderations", "body": {"model": plain, "input": "x"}}
    )
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    uploaded = await sdk.files.create(file=("m.jsonl", data), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/moderations", completion_window="24h"
    )
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
    assert batch.output_file_id and batch.error_file_id
    content = (await sdk.files.content(batch.output_file_id)).text
    output = [json.loads(x) for x in content.splitlines()]
    assert all(line["response"]["body"] == MODERATION for line in output)
    errors = (await sdk.files.content(batch.error_file_id)).text
    assert "other" in errors and "does not serve" in errors
    await sdk.close()


async def test_a_full_queue_answers_429_queue_full_at_once(stack, upstream) -> None:  # type: ignore[no-untyped-def]
    """The queue-aware admission chat has: six simultaneous moderations with
    `X-Llmq-Deadline: 2` on a capacity-1 model whose worker reported a 3 s job time — the
    first is taken (its answer comes after its 2 s first-byte deadline: a 504), the others
    get 429 `queue_full` with `Retry-After` at once, never a 504 at their deadline."""
    model = unique("omni-slow")
    slow = json_reply(200, MODERATION)
    slow.delay = 3.0
    upstream.route("/v1/moderations", slow)
    api = await stack.api()
    await stack.worker(model=[model], backend="openai", backend_url=f"{upstream.url}/v1",
                       openai_endpoints=ENDPOINTS, capacity=1)  # fmt: skip
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    warm = await client.moderations.create(model=model, input="warm up")
    assert warm.results[0].flagged is False
    await wait_for(  # the next heartbeat reports the job time
        lambda: any(w.job_seconds.get(model) for w in api.runtime.registry.workers_for(model))
    )

    async def timed(i: int) -> tuple[float, Any]:
        started = time.monotonic()
        try:
            await client.moderations.create(
                model=model, input=f"burst {i}", extra_headers={"x-llmq-deadline": "2"}
            )
            return time.monotonic() - started, None
        except openai.APIStatusError as exc:
            return time.monotonic() - started, exc

    results = await asyncio.gather(*(timed(i) for i in range(6)))
    await client.close()
    refused = [(t, r) for t, r in results if r is not None and r.status_code == 429]
    seen = [(round(t, 2), r and r.status_code) for t, r in results]
    assert len(refused) >= 5, seen  # one slot, 3 s a job: only the first starts within 2 s
    assert all(isinstance(r.body, dict) and r.body["code"] == "queue_full" for _, r in refused)
    assert all(int(r.response.headers["retry-after"]) >= 1 for _, r in refused)
    assert all(t < 1.5 for t, _ in refused), seen  # at once


async def test_a_caching_model_never_caches_an_endpoint(stack, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The response cache stays out of an endpoint's answer (the upstream's own bytes and
    content type) even on a model whose table entry caches: two identical moderations both
    reach the upstream, each marked `x-llmq-cache: skip`."""
    model = unique("omni-cached")
    table = tmp_path / "models.toml"
    table.write_text(f'[models."{model}"]\ncache = {{ ttl = "1h" }}\n')
    api = await stack.api(models_file=str(table))
    await stack.worker(model=[model], backend="openai", backend_url=f"{upstream.url}/v1",
                       openai_endpoints=ENDPOINTS)  # fmt: skip
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    sent = len(upstream.received)
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        for _ in range(2):
            resp = await http.post("/v1/moderations", json={"model": model, "input": "same"})
            assert resp.status_code == 200 and resp.json()["results"][0]["flagged"] is False
            assert resp.headers["x-llmq-cache"] == "skip"
    assert len([r for r in upstream.received[sent:] if r.path == "/v1/moderations"]) == 2


async def test_a_worker_seen_before_its_catalog_entry_is_served(stack, upstream) -> None:  # type: ignore[no-untyped-def]
    """The api's models' watch lags its workers' one (two watches, no order between them):
    a worker it sees is served at once, its endpoints and first-seen time read from the
    bucket, not a 404 "does not serve" nor a card created at 0."""
    model = unique("omni-early")
    api = await stack.api()
    await api.runtime.registry.synced.wait()
    await api.runtime.registry._followers[1].stop()  # the models' watch delivers nothing
    await stack.worker(model=[model], backend="openai", backend_url=f"{upstream.url}/v1",
                       openai_endpoints=ENDPOINTS)  # fmt: skip
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    assert api.runtime.registry.model_info(model) is None
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        card = await http.get(f"/v1/models/{model}")
        assert card.status_code == 200 and card.json()["created"] > 0, card.text
        resp = await http.post("/v1/moderations", json={"model": model, "input": "early"})
        assert resp.status_code == 200 and resp.json() == MODERATION, resp.text
