"""A stream that fails mid-way is booked with an estimate: one completion token per chunk the
client got. With natural batching one reply frame carries several chunks (`Llmq-Chunks`), so
the estimate counts chunks, not frames."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx

from llmq.api.logs import JsonFormatter
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import FakeUpstream, json_reply, openai_chat

WORDS = [" one", " two", " three", " four", " five"]


async def test_a_failed_stream_counts_every_chunk_of_a_joined_frame(stack: Any) -> None:
    model = unique("est")
    reply = openai_chat(WORDS, usage=None)
    first_write = b"".join(reply.chunks[: 1 + len(WORDS)])  # the role chunk and five words
    reply.chunks = [first_write, *reply.chunks[1 + len(WORDS) :]]
    reply.drop_after = 1  # then the upstream goes away without finishing
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("llmq.request")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with FakeUpstream() as upstream:
            upstream.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
            upstream.route("/v1/chat/completions", reply)
            api = await stack.api()
            await stack.worker(
                model=[f"{model}=gpt-4o-mini"],
                backend="openai",
                backend_url=f"{upstream.url}/v1",
                api_key_file="",
            )
            await wait_for(lambda: api.runtime.registry.workers_for(model))
            body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]}
            events: list[str] = []
            async with (
                httpx.AsyncClient(timeout=30) as client,
                client.stream("POST", f"{api.url}/v1/chat/completions", json=body) as response,
            ):
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
            await wait_for(lambda: "completion_tokens" in buffer.getvalue())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    assert "error" in chunks[-1] and events[-1] == "[DONE]"
    relayed = chunks[:-1]
    assert len(relayed) == 1 + len(WORDS)  # role + five words, all from one frame
    (entry,) = [json.loads(line) for line in buffer.getvalue().splitlines() if line]
    assert entry["status"] >= 500
    assert entry["completion_tokens"] == len(relayed)
