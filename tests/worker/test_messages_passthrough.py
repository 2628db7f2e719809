"""The Anthropic pass-through of `message` jobs (`worker/messages/passthrough`) against a real
HTTP server speaking Anthropic's protocol: events held back until the first output (so a
failure before it may go to another worker), Anthropic's error types kept, the usage with
cache reads and writes, the client's versions on the upstream request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.frames import Done
from llmq.worker.backends.base import BackendConfig, BackendError
from llmq.worker.backends.echo import EchoBackend
from llmq.worker.messages.jobs import MessageJobs
from llmq.worker.messages.passthrough import MessagesPassthrough, Tally, _Usage
from tests.worker.backends.fake_upstreams import (
    FAST,
    FakeUpstream,
    anthropic_events,
    anthropic_stream,
    json_reply,
)


class Sent:
    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.final: Done | None = None
        self.started: list[bool] = []

    async def chunks(self, batch: list[bytes]) -> None:
        self.events.extend(batch)

    async def done(self, frame: Done) -> None:
        self.final = frame

    async def on_start(self, streams: bool) -> None:
        self.started.append(streams)


@pytest.fixture
async def upstream():  # type: ignore[no-untyped-def]
    async with FakeUpstream() as server:
        yield server


def job(**fields: Any) -> JobEnvelope:
    return JobEnvelope(id="j1", model="pub", **fields)


BODY = json.dumps({"model": "pub", "max_tokens": 9, "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip


async def run(upstream: FakeUpstream, body: bytes = BODY, **fields: Any) -> Sent:
    passthrough = MessagesPassthrough(BackendConfig(kind="anthropic", url=upstream.url,
                                                    api_key="k", timeouts=FAST))  # fmt: skip
    sent = Sent()
    try:
        await passthrough.run({"pub": "claude-up"}, body, job(**fields), sent,  # type: ignore[arg-type]
                              started=sent.on_start)  # fmt: skip
    finally:
        await passthrough.aclose()
    return sent


async def test_events_relayed_as_sent_and_usage_counted(upstream: FakeUpstream) -> None:
    events = anthropic_events(["Hel", "lo"], input_tokens=7, output_tokens=5, cache_read=3)
    upstream.route("/v1/messages", anthropic_stream(events))
    sent = await run(upstream, anthropic_version="2023-06-01", anthropic_beta="b1,b2")
    assert [json.loads(e) for e in sent.events] == events
    assert sent.started == [True]
    assert sent.final is not None and sent.final.usage.prompt_tokens == 10
    assert sent.final.usage.completion_tokens == 5 and sent.final.usage.cached_tokens == 3
    got = upstream.last
    assert got.json()["model"] == "claude-up" and got.headers["anthropic-beta"] == "b1,b2"
    assert got.headers["x-api-key"] == "k"


async def test_an_error_before_any_output_may_go_elsewhere(upstream: FakeUpstream) -> None:
    events = [
        anthropic_events([])[0],
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
    ]
    upstream.route("/v1/messages", anthropic_stream(events))
    with pytest.raises(BackendError) as failed:
        await run(upstream)
    assert (failed.value.status, failed.value.type) == (529, "overloaded_error")
    assert failed.value.retryable


async def test_an_error_after_output_is_final(upstream: FakeUpstream) -> None:
    events = [
        *anthropic_events(["a"])[:4],
        {"type": "error", "error": {"type": "api_error", "message": "oops"}},
    ]
    upstream.route("/v1/messages", anthropic_stream(events))
    with pytest.raises(BackendError) as failed:
        await run(upstream)
    assert (failed.value.status, failed.value.retryable) == (500, False)


async def test_count_tokens_and_a_whole_message(upstream: FakeUpstream) -> None:
    upstream.route("/v1/messages/count_tokens", json_reply(200, {"input_tokens": 42}))
    sent = await run(upstream, message_op="count_tokens")
    assert sent.final is not None and json.loads(bytes(sent.final.body)) == {"input_tokens": 42}
    assert sent.final.usage.prompt_tokens == 0 and upstream.last.headers["anthropic-version"]
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
               "model": "claude-up", "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 4, "output_tokens": 2,
                         "cache_creation_input_tokens": 8}}  # fmt: skip
    upstream.route("/v1/messages", json_reply(200, message))
    whole = BODY.replace(b'"stream": true', b'"stream": false')
    sent = await run(upstream, whole)
    assert sent.final is not None and json.loads(bytes(sent.final.body)) == message
    assert sent.started == [False]
    assert (sent.final.usage.prompt_tokens, sent.final.usage.completion_tokens) == (12, 2)


def test_tally_in_llmq_terms() -> None:
    tally = Tally()
    tally.add(_Usage(input_tokens=10, cache_read_input_tokens=100, cache_creation_input_tokens=5,
                     output_tokens=1))  # fmt: skip
    tally.add(_Usage(output_tokens=30))
    usage = tally.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (115, 30, 145)
    assert usage.prompt_tokens_details == {"cached_tokens": 100, "cache_creation_tokens": 5}


async def test_a_chat_backend_answers_a_count_with_the_estimate() -> None:
    """A count job that reaches a worker without an Anthropic upstream (a model served by
    both kinds) is llmq's estimate, and the frame says so."""
    jobs = MessageJobs(EchoBackend(BackendConfig()), {}, BackendConfig(kind="echo"))
    sent = Sent()
    body = b'{"model":"pub","messages":[{"role":"user","content":"one two three"}]}'
    await jobs.run(body, job(message_op="count_tokens"), sent, sent.on_start)  # type: ignore[arg-type]
    assert sent.final is not None and sent.final.finish_reason == "estimate"
    assert json.loads(bytes(sent.final.body))["input_tokens"] >= 3
