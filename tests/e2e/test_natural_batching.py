"""Natural batching end to end (the openai SDK → api → JetStream → worker → a fake OpenAI
upstream over HTTP): every chunk one read from the upstream brought travels in one reply
frame, the client still gets each chunk on its own, in order and valid, and no chunk waits
for another. Frames are counted on the real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import openai
import pytest
from nats.aio.msg import Msg

from llmq.schemas import frames, names
from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import FakeUpstream, json_reply, openai_chat

CHAT = "/v1/chat/completions"
WORDS = [f" w{i}" for i in range(17)]
"""17 content chunks + the role chunk + the finish chunk + the usage chunk: 20 chunks."""


class FrameTap:
    """Every chunk frame the worker sends to any api inbox, by job (the subject's last token)."""

    def __init__(self) -> None:
        self.chunk_frames: dict[str, list[Msg]] = {}

    async def on_frame(self, msg: Msg) -> None:
        if (msg.headers or {}).get(names.H_FRAME) == frames.CHUNK:
            self.chunk_frames.setdefault(msg.subject.rsplit(".", 1)[-1], []).append(msg)

    def chunks_seen(self) -> int:
        return sum(
            int((m.headers or {}).get(names.H_CHUNKS, "1"))
            for sent in self.chunk_frames.values()
            for m in sent
        )

    def only_job(self) -> list[Msg]:
        [frames_of_job] = self.chunk_frames.values()
        return frames_of_job


@pytest.fixture
async def tap(stack: Any) -> AsyncIterator[FrameTap]:
    nc = await nats.connect(stack.nats_url)
    tapped = FrameTap()
    sub = await nc.subscribe("_INBOX.>", cb=tapped.on_frame)
    await nc.flush()
    yield tapped
    await sub.unsubscribe()
    await nc.close()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        server.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        yield server


async def _serve(stack: Any, upstream: FakeUpstream) -> tuple[Any, str]:
    public = unique("batch")
    api = await stack.api()
    worker = await stack.worker(
        model=[f"{public}=gpt-4o-mini"], backend="openai", backend_url=f"{upstream.url}/v1"
    )
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(public)})
    return api, public


def _client(api: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


async def test_twenty_chunks_in_one_write_travel_in_few_frames_and_arrive_apart(
    stack: Any, upstream: FakeUpstream, tap: FrameTap
) -> None:
    reply = openai_chat(WORDS, usage=(5, 17))
    reply.chunks = [b"".join(reply.chunks)]  # the whole body in one write
    upstream.route(CHAT, reply)
    api, public = await _serve(stack, upstream)

    stream = await _client(api).chat.completions.create(
        model=public,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert len(chunks) == 20
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:18]] == WORDS  # in order
    assert chunks[18].choices[0].finish_reason == "stop"
    assert chunks[19].choices == [] and chunks[19].usage is not None
    assert chunks[19].usage.completion_tokens == 17

    # the tap has its own connection: on a loaded machine its copies may come a moment later
    await wait_for(lambda: tap.chunks_seen() >= 20, timeout=10)
    sent = tap.only_job()
    per_frame = [int((m.headers or {}).get(names.H_CHUNKS, "1")) for m in sent]
    assert sum(per_frame) == 20  # every chunk, none lost or doubled
    assert len(sent) <= 3, per_frame  # one frame per read from the upstream, not 20
    assert [len(frames.split_chunks(m.data)) for m in sent] == per_frame


async def test_no_chunk_waits_for_the_next(
    stack: Any, upstream: FakeUpstream, tap: FrameTap
) -> None:
    """The upstream sends the role chunk and two words, then goes silent until the client
    leaves: the client must get all three while it is silent, one frame per read."""
    upstream.route(CHAT, openai_chat(["Hel", "lo"], usage=None, gap=1.0, hang_after=3))
    api, public = await _serve(stack, upstream)

    stream = await _client(api).chat.completions.create(
        model=public, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    got: list[str | None] = []
    async with asyncio.timeout(20):  # a held chunk would wait for ever: the upstream hangs
        async for chunk in stream:
            assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
            got.append(chunk.choices[0].delta.content)
            if len(got) == 3:
                break
    await stream.close()
    assert got == ["", "Hel", "lo"]
    await wait_for(lambda: tap.chunks_seen() >= 3, timeout=10)
    # Sent 1 s apart (so even a loaded machine reads each on its own): the role chunk rides
    # with "Hel" (it is held until the first token), "lo" goes alone.
    assert [int((m.headers or {}).get(names.H_CHUNKS, "1")) for m in tap.only_job()] == [2, 1]
