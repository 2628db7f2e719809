"""The anthropic backend against a fake Messages API server (SSE with `event:` lines)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    Usage,
)
from llmq.worker.backends.anthropic import AnthropicBackend
from llmq.worker.backends.base import AnthropicOptions, BackendConfig, BackendError, Call, Timeouts
from tests.worker.backends.fake_upstreams import (
    FAST,
    FakeUpstream,
    Piece,
    Reply,
    anthropic_error,
    anthropic_error_body,
    anthropic_event,
    anthropic_events,
    anthropic_stream,
    assert_cancel_closes_upstream,
    collect,
    collect_until_error,
    json_reply,
)

MESSAGES = "/v1/messages"
SECRET = "sk-ant-api03-test-key"

Make = Callable[..., AnthropicBackend]


@pytest.fixture
def make(upstream: FakeUpstream, built: Callable[[BackendConfig], Any]) -> Make:
    def factory(timeouts: Timeouts = FAST, **options: Any) -> AnthropicBackend:
        config = BackendConfig(
            kind="anthropic",
            url=upstream.url,
            api_key=SECRET,
            timeouts=timeouts,
            options=AnthropicOptions(**options),
        )
        backend = built(config)
        assert isinstance(backend, AnthropicBackend)
        return backend

    return factory


@pytest.fixture
def backend(make: Make) -> AnthropicBackend:
    return make()


def chat_request(*messages: Message, **fields: Any) -> ChatCompletionRequest:
    if not messages:
        messages = (Message(role="user", content="Say hi"),)
    return ChatCompletionRequest(model="public", messages=list(messages), **fields)


async def test_stream_becomes_pieces_with_usage_including_cached_input(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    events = anthropic_events(["Hello", "!"], input_tokens=25, output_tokens=3, cache_read=100)
    upstream.route(MESSAGES, anthropic_stream(events))
    pieces = await collect(backend.chat(Call.of(chat_request(), "claude-sonnet-4-5")))
    assert pieces == [
        Piece(content="Hello"),
        Piece(content="!"),
        Piece(finish_reason="stop", usage=Usage(125, 3, 128, {"cached_tokens": 100})),
    ]


async def test_request_translation_headers_system_tools_and_stop(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["ok"])))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        Message(role="system", content="You are terse."),
        Message(role="developer", content=[{"type": "text", "text": "Use metric units."}]),
        Message(role="user", content="Weather in Oslo and Bergen?"),
        Message(
            role="assistant",
            content="Checking.",
            tool_calls=[
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'},
                },
            ],
        ),
        Message(role="tool", content="-3C", tool_call_id="toolu_1"),
        Message(role="tool", content="2C", tool_call_id="toolu_2"),
    ]
    request = chat_request(
        *messages,
        temperature=0.5,
        stop="###",
        tools=tools,
        tool_choice="required",
        user="u-42",
    )
    await collect(backend.chat(Call.of(request, "claude-sonnet-4-5")))
    received = upstream.last
    assert (received.method, received.path) == ("POST", MESSAGES)
    assert received.headers["x-api-key"] == SECRET
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in received.headers
    assert received.json() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and Bergen?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"city": "Bergen"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "2C"},
                ],
            },
        ],
        "stream": True,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Use metric units."},
        ],
        "temperature": 0.5,
        "stop_sequences": ["###"],
        "tools": [
            {
                "name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "Current weather",
            }
        ],
        "tool_choice": {"type": "any"},
        "metadata": {"user_id": "u-42"},
    }


async def test_images_become_image_blocks(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["a cat"])))
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
    ]
    await collect(backend.chat(Call.of(chat_request(Message(role="user", content=content)), "m")))
    assert upstream.last.json()["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"},
        },
    ]


async def test_an_image_url_is_never_fetched_it_is_a_400(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["a cat"])))
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    request = chat_request(Message(role="user", content=content))
    _, error = await collect_until_error(backend.chat(Call.of(request, "m")))
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert "data: URL" in error.message
    assert upstream.received == []


@pytest.mark.parametrize(
    ("options", "fields", "expected"),
    [
        ({}, {}, 4096),
        ({"default_max_tokens": 1000}, {}, 1000),
        ({"default_max_tokens": 1000}, {"max_tokens": 20}, 20),
        ({}, {"max_completion_tokens": 30}, 30),
    ],
)
async def test_max_tokens_default_and_override(
    upstream: FakeUpstream,
    make: Make,
    options: dict[str, int],
    fields: dict[str, int],
    expected: int,
) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["ok"])))
    await collect(make(**options).chat(Call.of(chat_request(**fields), "m")))
    assert upstream.last.json()["max_tokens"] == expected


async def test_stop_list_becomes_stop_sequences(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["ok"])))
    await collect(backend.chat(Call.of(chat_request(stop=["a", "b"]), "m")))
    assert upstream.last.json()["stop_sequences"] == ["a", "b"]


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
    ],
)
async def test_stop_reasons_map_to_finish_reasons(
    upstream: FakeUpstream, backend: AnthropicBackend, stop_reason: str, finish: str
) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["x"], stop_reason=stop_reason)))
    pieces = await collect(backend.chat(Call.of(chat_request(), "m")))
    assert pieces[-1] == Piece(finish_reason=finish, usage=Usage(25, 3, 28))


async def test_tool_use_blocks_become_tool_call_deltas(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    events = anthropic_events(
        ["Let me check."],
        stop_reason="tool_use",
        tool=("toolu_01A", "get_weather", ['{"city": ', '"Paris"}']),
    )
    upstream.route(MESSAGES, anthropic_stream(events))
    pieces = await collect(backend.chat(Call.of(chat_request(), "m")))
    assert pieces[:-1] == [
        Piece(content="Let me check."),
        Piece(
            tool_calls=[
                {
                    "index": 0,
                    "id": "toolu_01A",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        ),
        Piece(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        Piece(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
    ]
    assert pieces[-1].finish_reason == "tool_calls"


async def test_unknown_events_and_thinking_blocks_are_skipped(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    events = anthropic_events(["Hi"])
    thinking = [
        {"type": "content_block_start", "index": 5, "content_block": {"type": "thinking"}},
        {
            "type": "content_block_delta",
            "index": 5,
            "delta": {"type": "thinking_delta", "thinking": "hmm"},
        },
    ]
    body = [anthropic_event(e) for e in [events[0], *thinking, *events[1:]]]
    body.insert(1, b'event: future_event\ndata: {"type": "future_event", "x": 1}\n\n')
    upstream.route(MESSAGES, Reply(chunks=body, content_type="text/event-stream"))
    pieces = await collect(backend.chat(Call.of(chat_request(), "m")))
    assert [p.content for p in pieces] == ["Hi", None]


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "type_", "expected_status", "expected_type", "retryable"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", False),
        (401, "authentication_error", 502, "upstream_auth_error", False),
        (403, "permission_error", 502, "upstream_auth_error", False),
        (404, "not_found_error", 404, "invalid_request_error", False),
        (500, "api_error", 502, "upstream_error", True),
        (529, "overloaded_error", 502, "upstream_error", True),
    ],
)
async def test_http_errors_map_with_anthropics_error_body(
    upstream: FakeUpstream,
    backend: AnthropicBackend,
    status: int,
    type_: str,
    expected_status: int,
    expected_type: str,
    retryable: bool,
) -> None:
    message = "messages.0.content: Input should be a valid list"
    upstream.route(MESSAGES, anthropic_error(status, type_, message))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == []
    assert (error.status, error.type, error.retryable) == (
        expected_status,
        expected_type,
        retryable,
    )
    if status in (400, 404):
        assert error.message == message
    if status >= 500:
        assert message in error.message


async def test_rate_limit_is_a_429_with_retry_after(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    reply = anthropic_error(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
        headers={"retry-after": "12"},
    )
    upstream.route(MESSAGES, reply)
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert (error.status, error.retryable, error.retry_after) == (429, True, 12.0)


async def test_overloaded_error_event_before_any_text_is_retryable(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    events = anthropic_events(["never"])
    body = [
        anthropic_event(events[0]),
        anthropic_event(anthropic_error_body("overloaded_error", "Overloaded")),
    ]
    upstream.route(MESSAGES, Reply(chunks=body, content_type="text/event-stream"))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == []
    assert (error.status, error.retryable, error.message) == (
        502,
        True,
        "upstream error: Overloaded",
    )
    assert error.code == "overloaded_error"


async def test_error_event_mid_stream_is_a_non_retryable_502(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    events = anthropic_events(["Hello"])
    failure = anthropic_error_body("overloaded_error", "Overloaded")
    body = [anthropic_event(e) for e in events[:4]] + [anthropic_event(failure)]
    upstream.route(MESSAGES, Reply(chunks=body, content_type="text/event-stream"))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="Hello")]
    assert (error.status, error.retryable, error.message) == (
        502,
        False,
        "upstream error: Overloaded",
    )


async def test_dropped_mid_stream_is_a_non_retryable_502(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["one", " two"]), drop_after=4))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="one")]
    assert (error.status, error.retryable) == (502, False)


async def test_body_ending_before_message_stop_is_an_error(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    events = anthropic_events(["one"])[:-1]
    upstream.route(MESSAGES, anthropic_stream(events))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="one")]
    assert (error.status, error.code) == (502, "upstream_disconnected")


async def test_pings_do_not_reset_the_between_tokens_timeout(
    upstream: FakeUpstream, make: Make
) -> None:
    backend = make(Timeouts(connect=1, first_token=5, between_tokens=0.3, total=5))
    events = anthropic_events(["one"])
    body = [anthropic_event(e) for e in events[:4]] + [anthropic_event({"type": "ping"})] * 10
    upstream.route(MESSAGES, Reply(chunks=body, content_type="text/event-stream", gap=0.1))
    # Were pings counted as tokens, the body would end without message_stop: a 502, not this.
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="one")]
    assert (error.status, error.message) == (504, "upstream timed out: no token for 0.3s")


async def test_cancelling_the_consumer_closes_the_upstream_stream(
    upstream: FakeUpstream, backend: AnthropicBackend
) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["one", " two"]), hang_after=4))
    await assert_cancel_closes_upstream(upstream, backend.chat(Call.of(chat_request(), "m")))


async def test_completion_and_embeddings_are_unsupported(backend: AnthropicBackend) -> None:
    assert backend.kinds == frozenset({"chat", "message"})  # Messages: passed through
    with pytest.raises(BackendError) as caught:
        backend.complete(Call.of(CompletionRequest(model="p", prompt="x"), "m"))
    assert (caught.value.status, caught.value.code) == (400, "unsupported_endpoint")
    with pytest.raises(BackendError) as caught:
        await backend.embed(EmbeddingRequest(model="p", input="x"), "m")
    assert (caught.value.status, caught.value.type) == (400, "invalid_request_error")


@pytest.mark.parametrize(("status", "up"), [(200, True), (401, True), (503, False)])
async def test_probe_lists_models(
    upstream: FakeUpstream, backend: AnthropicBackend, status: int, up: bool
) -> None:
    upstream.route("/v1/models", json_reply(status, {"data": [], "has_more": False}))
    assert await backend.probe() is up
    assert (upstream.last.method, upstream.last.path) == ("GET", "/v1/models")
    assert upstream.last.headers["x-api-key"] == SECRET
    assert SECRET not in repr(backend)
