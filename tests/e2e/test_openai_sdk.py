"""The official openai SDK against llmq: sync and async, streaming and not."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.stack import unique, wait_for


@pytest.fixture
async def echo(stack):  # type: ignore[no-untyped-def]
    model = unique("echo")
    api = await stack.api()
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    return api, model


async def test_async_non_streaming_shape(echo) -> None:  # type: ignore[no-untyped-def]
    api, model = echo
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused")
    resp = await client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ],
    )
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == model
    assert isinstance(resp.created, int) and resp.created > 1_700_000_000
    assert len(resp.choices) == 1
    assert resp.choices[0].index == 0
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "hello there world"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (
        5,
        3,
        8,
    )
    await client.close()


async def test_max_tokens_truncates_with_length(echo) -> None:  # type: ignore[no-untyped-def]
    api, model = echo
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused")
    resp = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "one two three four"}], max_tokens=2
    )
    assert resp.choices[0].message.content == "one two"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 2
    await client.close()


async def test_async_streaming_with_usage(echo) -> None:  # type: ignore[no-untyped-def]
    api, model = echo
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "alpha beta gamma"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "alpha beta gamma"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens == 3
    await client.close()


async def test_streaming_without_usage_has_no_usage_chunk(echo) -> None:  # type: ignore[no-untyped-def]
    api, model = echo
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "a b"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    await client.close()


async def test_raw_sse_ends_with_done(echo) -> None:  # type: ignore[no-untyped-def]
    import httpx

    api, model = echo
    async with httpx.AsyncClient() as client:
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "x y"}]}
        resp = await client.post(f"{api.url}/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert resp.headers["x-request-id"]


async def test_sync_client_streaming_and_not(echo) -> None:  # type: ignore[no-untyped-def]
    api, model = echo

    def call() -> tuple[str, str]:
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused")
        whole = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "sync works"}]
        )
        parts = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "sync streams too"}], stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        client.close()
        return whole.choices[0].message.content or "", streamed

    whole, streamed = await asyncio.to_thread(call)
    assert whole == "sync works"
    assert streamed == "sync streams too"


async def test_models_lists_live_workers_only(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    model = unique("m")
    worker = await stack.worker(model=[model])
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused")
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    listed = {m.id: m for m in (await client.models.list()).data}
    assert model in listed and listed[model].owned_by == "echo"
    await worker.close()
    ttl = api.settings.protocol.heartbeat * 3

    async def gone() -> bool:
        return model not in {m.id for m in (await client.models.list()).data}

    await wait_for(gone, timeout=ttl + 1)
    await client.close()


async def test_dead_worker_ages_out_within_ttl(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    model = unique("m")
    proc = stack.process("worker", "--model", model)
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    proc.kill()
    killed = asyncio.get_running_loop().time()
    await wait_for(lambda: not api.runtime.registry.workers_for(model), timeout=5)
    assert asyncio.get_running_loop().time() - killed <= api.settings.protocol.heartbeat * 3 + 0.5


async def test_legacy_completions_and_embeddings(echo) -> None:  # type: ignore[no-untyped-def]
    api, model = echo
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused")
    done = await client.completions.create(model=model, prompt="say it back", max_tokens=2)
    assert done.object == "text_completion"
    assert done.choices[0].text == "say it"
    assert done.choices[0].finish_reason == "length"
    streamed = await client.completions.create(model=model, prompt="p q r", stream=True)
    assert "".join([c.choices[0].text async for c in streamed if c.choices]) == "p q r"
    emb = await client.embeddings.create(model=model, input=["a b", "c"])
    assert [d.index for d in emb.data] == [0, 1]
    assert len(emb.data[0].embedding) == 16
    assert emb.usage.prompt_tokens == 3
    await client.close()
