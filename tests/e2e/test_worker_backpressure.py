"""A worker that produces faster than NATS takes its frames (worker/outbound.py): many large
streams from one echo worker process at full speed, read by the openai SDK through an api
process, all come through whole: every word, `[DONE]`, no `frames_lost` 502."""

from __future__ import annotations

import asyncio

import openai

from tests.stack import unique, wait_serving

STREAMS = 24
WORDS = 20_000
"""About 4 MB of SSE a stream: 24 of them is ~100 MB through one worker connection."""


async def _one(client: openai.AsyncOpenAI, model: str) -> tuple[int, str | None]:
    stream = await client.chat.completions.create(
        model=model,
        stream=True,
        max_tokens=WORDS,
        messages=[{"role": "user", "content": " ".join(["word"] * WORDS)}],
    )
    words = 0
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                words += len(choice.delta.content.split())
            finish = choice.finish_reason or finish
    return words, finish


async def test_many_large_streams_from_a_full_speed_worker_arrive_whole(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("fast")
    api = await stack.api_process()
    worker = stack.process(
        "worker", "--model", model, "--capacity", str(STREAMS), "--backend", "echo"
    )
    await wait_serving(api.url, model, timeout=60)
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=240)
    try:
        results = await asyncio.gather(
            *(_one(client, model) for _ in range(STREAMS)), return_exceptions=True
        )
    finally:
        await client.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} of {STREAMS} failed: {failures[:3]}\n" + worker.output()[-3000:]
    assert results == [(WORDS, "length")] * STREAMS or results == [(WORDS, "stop")] * STREAMS
    assert "OutboundBufferLimitError" not in worker.output()
