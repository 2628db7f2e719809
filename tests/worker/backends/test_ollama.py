"""The ollama backend against a fake Ollama server (native NDJSON API) over real HTTP."""

from __future__ import annotations

import json
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
from llmq.worker.backends.base import BackendConfig, BackendError, Call, OllamaOptions, Timeouts
from llmq.worker.backends.ollama import OllamaBackend
from tests.worker.backends.fake_upstreams import (
    FAST,
    FakeUpstream,
    Piece,
    Reply,
    assert_cancel_closes_upstream,
    collect,
    collect_until_error,
    json_reply,
    ndjson,
    ollama_chat,
    ollama_error,
    ollama_generate,
)

CHAT = "/api/chat"

Make = Callable[..., OllamaBackend]


@pytest.fixture
def make(upstream: FakeUpstream, built: Callable[[BackendConfig], Any]) -> Make:
    def factory(timeouts: Timeouts = FAST, **options: Any) -> OllamaBackend:
        config = BackendConfig(
            kind="ollama", url=upstream.url, timeouts=timeouts, options=OllamaOptions(**options)
        )
        backend = built(config)
        assert isinstance(backend, OllamaBackend)
        return backend

    return factory


@pytest.fixture
def backend(make: Make) -> OllamaBackend:
    return make()


def chat_request(*messages: Message, **fields: Any) -> ChatCompletionRequest:
    if not messages:
        messages = (
            Message(role="developer", content="Answer in French."),
            Message(role="user", content="Say hi"),
        )
    return ChatCompletionRequest(model="public", messages=list(messages), **fields)


async def test_chat_streams_pieces_with_ollama_counts_as_usage(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    upstream.route(CHAT, ollama_chat(["Bon", "jour"], prompt_eval_count=26, eval_count=3))
    pieces = await collect(backend.chat(Call.of(chat_request(), "llama3.2")))
    assert pieces == [
        Piece(content="Bon"),
        Piece(content="jour"),
        Piece(finish_reason="stop", usage=Usage(26, 3, 29)),
    ]


async def test_chat_maps_sampling_fields_into_options_and_keep_alive(
    upstream: FakeUpstream, make: Make
) -> None:
    backend = make(keep_alive="10m", num_ctx=8192)
    upstream.route(CHAT, ollama_chat(["ok"]))
    request = chat_request(
        temperature=0.3,
        top_p=0.9,
        max_completion_tokens=64,
        stop="END",
        seed=42,
        frequency_penalty=0.5,
        response_format={"type": "json_object"},
    )
    await collect(backend.chat(Call.of(request, "llama3.2:3b")))
    received = upstream.last
    assert (received.method, received.path) == ("POST", CHAT)
    assert "authorization" not in received.headers
    assert received.json() == {
        "model": "llama3.2:3b",
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Say hi"},
        ],
        "stream": True,
        "keep_alive": "10m",
        "options": {
            "temperature": 0.3,
            "top_p": 0.9,
            "seed": 42,
            "frequency_penalty": 0.5,
            "num_predict": 64,
            "stop": ["END"],
            "num_ctx": 8192,
        },
        "format": "json",
    }


async def test_minimal_request_has_no_options_and_no_keep_alive(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    upstream.route(CHAT, ollama_chat(["ok"]))
    await collect(backend.chat(Call.of(chat_request(Message(role="user", content="hi")), "m")))
    assert upstream.last.json() == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


async def test_numeric_keep_alive_is_sent_as_a_number(upstream: FakeUpstream, make: Make) -> None:
    upstream.route(CHAT, ollama_chat(["ok"]))
    await collect(make(keep_alive="-1").chat(Call.of(chat_request(), "m")))
    assert upstream.last.json()["keep_alive"] == -1


async def test_json_schema_response_format_becomes_format(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    upstream.route(CHAT, ollama_chat(["{}"]))
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    request = chat_request(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    await collect(backend.chat(Call.of(request, "m")))
    assert upstream.last.json()["format"] == schema


@pytest.mark.parametrize(("done_reason", "finish"), [("length", "length"), ("stop", "stop")])
async def test_done_reason_maps_to_finish_reason(
    upstream: FakeUpstream, backend: OllamaBackend, done_reason: str, finish: str
) -> None:
    upstream.route(CHAT, ollama_chat(["a"], done_reason=done_reason))
    pieces = await collect(backend.chat(Call.of(chat_request(), "m")))
    assert pieces[-1].finish_reason == finish


async def test_usage_is_counted_when_ollama_omits_the_counts(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    reply = ollama_chat(["Bonjour", " tout", " le monde"], prompt_eval_count=None, eval_count=None)
    upstream.route(CHAT, reply)
    pieces = await collect(backend.chat(Call.of(chat_request(), "m")))
    # "Answer in French." + "Say hi" = 5 words; "Bonjour tout le monde" = 4.
    assert pieces[-1].usage == Usage(5, 4, 9)


async def test_tools_and_tool_calls_translate_both_ways(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    calls = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    upstream.route(CHAT, ollama_chat([], tool_calls=calls))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    history = [
        Message(role="user", content=[{"type": "text", "text": "Weather?"}, _image_part()]),
        Message(
            role="assistant",
            content=None,
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        ),
        Message(role="tool", content="-3C", tool_call_id="call_1"),
    ]
    pieces = await collect(backend.chat(Call.of(chat_request(*history, tools=tools), "m")))
    sent = upstream.last.json()
    assert sent["tools"] == tools
    assert sent["messages"] == [
        {"role": "user", "content": "Weather?", "images": ["aGVsbG8="]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "-3C", "tool_call_id": "call_1", "tool_name": "get_weather"},
    ]
    (call,) = pieces[0].tool_calls or []
    assert call["index"] == 0
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert pieces[-1].finish_reason == "tool_calls"


def _image_part() -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}


async def test_image_urls_that_are_not_data_urls_are_rejected(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    request = chat_request(Message(role="user", content=[part]))
    _, error = await collect_until_error(backend.chat(Call.of(request, "m")))
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert upstream.received == []


async def test_completion_uses_generate(upstream: FakeUpstream, backend: OllamaBackend) -> None:
    upstream.route("/api/generate", ollama_generate(["def", " f"], done_reason="length"))
    request = CompletionRequest(model="p", prompt="# python\n", max_tokens=2, suffix="\n")
    pieces = await collect(backend.complete(Call.of(request, "codellama")))
    assert pieces == [
        Piece(content="def"),
        Piece(content=" f"),
        Piece(finish_reason="length", usage=Usage(5, 2, 7)),
    ]
    assert upstream.last.json() == {
        "model": "codellama",
        "prompt": "# python\n",
        "stream": True,
        "options": {"num_predict": 2},
        "suffix": "\n",
    }


async def test_completion_with_several_prompts_is_rejected(backend: OllamaBackend) -> None:
    request = CompletionRequest(model="p", prompt=["a", "b"])
    _, error = await collect_until_error(backend.complete(Call.of(request, "m")))
    assert error.status == 400


async def test_embed_uses_api_embed(upstream: FakeUpstream, make: Make) -> None:
    payload = {
        "model": "all-minilm",
        "embeddings": [[0.1, 0.2], [0.3, 0.4]],
        "total_duration": 14143917,
        "load_duration": 1019500,
        "prompt_eval_count": 8,
    }
    upstream.route("/api/embed", json_reply(200, payload))
    result = await make(keep_alive="5m").embed(
        EmbeddingRequest(model="p", input=["a", "b"]), "all-minilm"
    )
    assert result.vectors == [[0.1, 0.2], [0.3, 0.4]]
    assert result.usage == Usage(8, 0, 8)
    assert upstream.last.json() == {"model": "all-minilm", "input": ["a", "b"], "keep_alive": "5m"}


async def test_embed_rejects_token_ids(backend: OllamaBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.embed(EmbeddingRequest(model="p", input=[1, 2, 3]), "m")
    assert caught.value.status == 400


# --- errors --------------------------------------------------------------------------------


async def test_unknown_model_is_a_404_with_ollamas_message(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    message = 'model "nope" not found, try pulling it first'
    upstream.route(CHAT, ollama_error(404, message))
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "nope")))
    assert (error.status, error.type, error.code, error.message) == (
        404,
        "invalid_request_error",
        "model_not_found",
        message,
    )


@pytest.mark.parametrize(
    ("status", "expected", "retryable"), [(400, 400, False), (401, 502, False), (500, 502, True)]
)
async def test_http_errors_map_with_ollamas_error_body(
    upstream: FakeUpstream, backend: OllamaBackend, status: int, expected: int, retryable: bool
) -> None:
    upstream.route(CHAT, ollama_error(status, "invalid options: num_predict"))
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert (error.status, error.retryable) == (expected, retryable)
    if status == 400:
        assert error.message == "invalid options: num_predict"


async def test_error_line_mid_stream_is_a_non_retryable_502(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    lines = [*ollama_chat(["one"]).chunks[:1], *ndjson([{"error": "an error was encountered"}])]
    upstream.route(CHAT, Reply(chunks=lines, content_type="application/x-ndjson"))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="one")]
    assert (error.status, error.retryable) == (502, False)
    assert error.message == "upstream error: an error was encountered"


async def test_dropped_mid_stream_is_a_non_retryable_502(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    upstream.route(CHAT, ollama_chat(["one", " two"], drop_after=1))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="one")]
    assert (error.status, error.retryable) == (502, False)


async def test_body_ending_without_done_is_an_error(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    upstream.route(CHAT, Reply(chunks=ollama_chat(["one"]).chunks[:1]))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="one")]
    assert (error.status, error.code) == (502, "upstream_disconnected")


async def test_slow_model_load_hits_the_first_token_timeout(
    upstream: FakeUpstream, make: Make
) -> None:
    backend = make(Timeouts(connect=1, first_token=0.2, between_tokens=5, total=5))
    upstream.route(CHAT, ollama_chat(["late"], hang_after=0))
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert (error.status, error.type) == (504, "timeout")


async def test_cancelling_the_consumer_closes_the_upstream_stream(
    upstream: FakeUpstream, backend: OllamaBackend
) -> None:
    upstream.route(CHAT, ollama_chat(["one", " two"], hang_after=1))
    await assert_cancel_closes_upstream(upstream, backend.chat(Call.of(chat_request(), "m")))


@pytest.mark.parametrize(("status", "up"), [(200, True), (500, False)])
async def test_probe_gets_the_version(
    upstream: FakeUpstream, backend: OllamaBackend, status: int, up: bool
) -> None:
    upstream.route("/api/version", json_reply(status, {"version": "0.5.7"}))
    assert await backend.probe() is up
    assert (upstream.last.method, upstream.last.path) == ("GET", "/api/version")
