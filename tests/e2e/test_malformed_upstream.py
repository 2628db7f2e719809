"""A broken or hostile backend: values of the wrong type where its protocol has a string, a
number or an object (a numeric `finish_reason`, an object `stop_reason`, a tool call that is
not one). Every route that reads them — chat, completions, Responses and Messages, streamed
or whole, on an `openai` and an `anthropic` worker — answers the client a 502
`upstream_error` (or, once a stream has begun, one error event of that type), never a 500,
a 400 that blames the client, or a hang."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Received,
    Reply,
    anthropic_events,
    anthropic_stream,
    json_reply,
    ndjson,
    ollama_chat,
    openai_chunk,
    openai_usage,
    sse_data,
)

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]

BAD_CHOICES: list[tuple[str, dict[str, Any]]] = [
    ("finish_reason a number", {"finish_reason": 5}),
    ("finish_reason an object", {"finish_reason": {"why": "stop"}}),
    ("finish_reason a list", {"finish_reason": ["stop"]}),
    ("finish_reason true", {"finish_reason": True}),
    ("delta a number", {"delta": 5}),
    ("content an object", {"delta": {"content": {"text": "x"}}}),
    ("tool call index a list",
     {"delta": {"tool_calls": [{"index": [0], "function": {"name": "f", "arguments": "{}"}}]}}),
    ("tool call function a string", {"delta": {"tool_calls": [{"index": 0, "function": "f"}]}}),
    ("tool call a number", {"delta": {"tool_calls": [7]}}),
    ("tool call name a number",
     {"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": 5}}]}}),
    ("index a string", {"index": "zero"}),
]  # fmt: skip
"""One chat chunk's choice, broken: merged into a well-formed chunk."""


def chat_reply(bad: dict[str, Any], asked: Received) -> Reply:
    """The stream with one broken chunk, or (asked for no stream) the whole completion with
    the same fault in its choice (`delta` standing for `message`)."""
    choice: dict[str, Any] = {"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}
    choice.update(bad)
    if not asked.json().get("stream"):
        whole = {"index": 0, "message": {"role": "assistant", "content": "Hello"},
                 "logprobs": None, "finish_reason": "stop"}  # fmt: skip
        whole.update({"message" if k == "delta" else k: v for k, v in bad.items()})
        completion = {**openai_chunk({}), "object": "chat.completion", "choices": [whole],
                      "usage": openai_usage(5, 2)}  # fmt: skip
        return json_reply(200, completion)
    broken = {**openai_chunk({}), "choices": [choice]}
    chunks = [
        openai_chunk({"role": "assistant", "content": ""}),
        openai_chunk({"content": "Hel"}),
        broken,
        openai_chunk({}, "stop"),
        openai_chunk(usage=openai_usage(5, 2), empty=True),
    ]
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


BAD_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("stop_reason a number", {"delta": {"stop_reason": 5, "stop_sequence": None}}),
    ("stop_reason an object", {"delta": {"stop_reason": {"x": 1}, "stop_sequence": None}}),
    ("stop_reason a list", {"delta": {"stop_reason": ["end_turn"], "stop_sequence": None}}),
    ("delta a number", {"delta": 5}),
    ("output_tokens a string", {"usage": {"output_tokens": "many"}}),
    ("usage a list", {"usage": [1]}),
]
"""The `message_delta` event of an Anthropic stream, broken."""


def anthropic_reply(bad: dict[str, Any], asked: Received) -> Reply:
    """The stream with a broken `message_delta`, or (asked for no stream) the whole Message
    with the same fault."""
    events = anthropic_events(["Hel", "lo"])
    if not asked.json().get("stream"):
        message = {**events[0]["message"], "content": [{"type": "text", "text": "Hello"}],
                   "stop_reason": "end_turn"}  # fmt: skip
        delta = bad.get("delta", {})
        message.update(delta if isinstance(delta, dict) else {"content": delta})
        if "usage" in bad:
            message["usage"] = bad["usage"]
        return json_reply(200, message)
    for event in events:
        if event["type"] == "message_delta":
            event.update(bad)
    return anthropic_stream(events)


BAD_LINES: list[tuple[str, dict[str, Any]]] = [
    ("done_reason a number", {"done_reason": 5}),
    ("done_reason an object", {"done_reason": {"x": 1}}),
    ("tool call function a string",
     {"message": {"role": "assistant", "content": "", "tool_calls": [{"function": "f"}]}}),
    ("tool call name a number", {"message": {"role": "assistant", "content": "",
                                             "tool_calls": [{"function": {"name": 5}}]}}),
    ("eval_count a string", {"eval_count": "3"}),
]  # fmt: skip
"""Ollama's final NDJSON line, broken."""


def _error_of(status: int, text: str) -> dict[str, Any]:
    """The error a client got: a whole body's, or a stream's error event."""
    if status != 200:
        return json.loads(text)["error"]  # type: ignore[no-any-return]
    for line in text.splitlines():
        if line.startswith("data: {"):
            data = json.loads(line[6:])
            error = data.get("error") or (data.get("response") or {}).get("error")
            if data.get("type") in ("error", "response.failed") or data.get("error"):
                return error  # type: ignore[no-any-return]
    raise AssertionError(f"no error in the stream: {text[:2000]}")


async def _ask(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[int, str]:
    resp = await client.post(path, json=body)
    return resp.status_code, resp.text


def _wrong(path: str, status: int, text: str) -> str | None:
    """What is wrong with the answer to a request a malformed backend served, if anything.
    OpenAI's routes answer 502 `upstream_error`; `/v1/messages` answers that failure in
    Anthropic's terms, 500 `api_error` (api/messages/protocol.py). Once a stream has begun,
    the same error comes as its last event."""
    anthropic = path == "/v1/messages"
    if status not in (200, 500 if anthropic else 502):
        return f"{status} {text[:300]}"
    try:
        error = _error_of(status, text)
    except AssertionError as exc:
        return str(exc)[:300]
    if anthropic and error.get("type") != "api_error":
        return f"{status} {error}"
    if path == "/v1/responses" and status == 200:  # `response.failed`: the spec's codes
        return None if error.get("code") == "server_error" else f"{status} {error}"
    if not anthropic and (error.get("type"), error.get("code")) != (
        "upstream_error",
        "upstream_malformed",
    ):
        return f"{status} {error}"
    return None


@pytest.fixture
async def served(stack, upstream: FakeUpstream):  # type: ignore[no-untyped-def]
    gpt, claude, llama = unique("gpt"), unique("claude"), unique("llama")
    api = await stack.api()
    await stack.worker(model=[gpt], backend="openai", backend_url=f"{upstream.url}/v1",
                       breaker_threshold=1000)  # fmt: skip
    await stack.worker(model=[claude], backend="anthropic", backend_url=upstream.url,
                       api_key_file="", breaker_threshold=1000)  # fmt: skip
    await stack.worker(model=[llama], backend="ollama", backend_url=upstream.url,
                       breaker_threshold=1000)  # fmt: skip
    for model in (gpt, claude, llama):
        await wait_for(lambda m=model: api.runtime.registry.workers_for(m))
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        yield client, gpt, claude, llama


def _requests(model: str) -> list[tuple[str, str, dict[str, Any]]]:
    chat = {"model": model, "messages": USER}
    message = {"model": model, "messages": USER, "max_tokens": 20}
    response = {"model": model, "input": "hi"}
    return [
        (f"{path} stream={stream}", path, {**body, "stream": stream})
        for path, body in (
            (CHAT, chat),
            ("/v1/messages", message),
            ("/v1/responses", response),
        )
        for stream in (False, True)
    ]


async def test_a_malformed_chat_backend_is_a_502(served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    client, gpt, _, _ = served
    problems: list[str] = []
    for name, bad in BAD_CHOICES:
        upstream.respond(CHAT, lambda asked, bad=bad: chat_reply(bad, asked))
        for label, path, body in _requests(gpt):
            wrong = _wrong(path, *await _ask(client, path, body))
            if wrong:
                problems.append(f"{name}, {label}: {wrong}")
    assert not problems, "\n".join(problems)


async def test_a_malformed_anthropic_backend_is_a_502(served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    client, _, claude, _ = served
    problems: list[str] = []
    for name, bad in BAD_EVENTS:
        upstream.respond("/v1/messages", lambda asked, bad=bad: anthropic_reply(bad, asked))
        for label, path, body in _requests(claude):
            if path == "/v1/responses":
                continue  # an anthropic worker serves chat and message jobs
            wrong = _wrong(path, *await _ask(client, path, body))
            if wrong:
                problems.append(f"{name}, {label}: {wrong}")
    assert not problems, "\n".join(problems)


async def test_a_malformed_ollama_backend_is_a_502(served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    client, _, _, llama = served
    problems: list[str] = []
    for name, bad in BAD_LINES:
        lines = [_json(chunk) for chunk in ollama_chat(["Hel", "lo"]).chunks]
        lines[-1].update(bad)
        upstream.route("/api/chat", Reply(chunks=ndjson(lines),
                                          content_type="application/x-ndjson"))  # fmt: skip
        for label, path, body in _requests(llama):
            wrong = _wrong(path, *await _ask(client, path, body))
            if wrong:
                problems.append(f"{name}, {label}: {wrong}")
    assert not problems, "\n".join(problems)


def _json(line: bytes) -> dict[str, Any]:
    return json.loads(line)  # type: ignore[no-any-return]
