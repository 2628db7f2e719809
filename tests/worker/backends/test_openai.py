"""The openai backend against a fake OpenAI-compatible server over real HTTP.

Also the home of the shared error and timeout mapping tests (worker/upstream/error_mapping.py,
timeouts.py, calls.py): the other two backends' tests check the same paths with their own
wire formats.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import Any

import pytest

from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    StreamOptions,
    Usage,
)
from llmq.worker.backends.base import (
    BackendConfig,
    BackendError,
    Call,
    OpenAIOptions,
    ReplyTo,
    Timeouts,
)
from llmq.worker.backends.openai import OpenAIBackend
from tests.stack import refused_port
from tests.worker.backends.fake_upstreams import (
    FAST,
    FakeUpstream,
    Piece,
    Reply,
    assert_cancel_closes_upstream,
    chunks_of,
    collect,
    collect_outs,
    collect_until_error,
    json_reply,
    openai_chat,
    openai_chunk,
    openai_completion,
    openai_error,
    sse_data,
)

CHAT = "/v1/chat/completions"
SECRET = "sk-test-0123456789abcdef"

Make = Callable[..., OpenAIBackend]


def usage(prompt: int, completion: int) -> Usage:
    """The usage `openai_usage` sends, details included (relayed as they came)."""
    details = {"cached_tokens": 0, "audio_tokens": 0}
    return Usage(prompt, completion, prompt + completion, details, {"reasoning_tokens": 0})


@pytest.fixture(params=["fast", "httpx"])
def make(
    upstream: FakeUpstream, built: Callable[[BackendConfig], Any], request: pytest.FixtureRequest
) -> Make:
    """Every test runs with both HTTP clients of `Upstream`: the lean one used for plain-http
    upstreams (worker/upstream/fast_client.py) and httpx (https, proxies)."""

    def factory(timeouts: Timeouts = FAST, url: str | None = None, **options: Any) -> OpenAIBackend:
        config = BackendConfig(
            kind="openai",
            url=url if url is not None else f"{upstream.url}/v1",
            api_key=SECRET,
            headers={"x-org": "llmq-test"},
            timeouts=timeouts,
            http_client="httpx" if request.param == "httpx" else "auto",
            options=OpenAIOptions(**options),
        )
        backend = built(config)
        assert isinstance(backend, OpenAIBackend)
        assert (type(backend._upstream.client).__name__ == "FastClient") == (
            request.param == "fast" and (url is None or url.startswith("http:"))
        )
        return backend

    return factory


@pytest.fixture
def backend(make: Make) -> OpenAIBackend:
    return make()


def chat_request(**fields: Any) -> ChatCompletionRequest:
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Say hi")]
    return ChatCompletionRequest(model="public-model", messages=messages, **fields)


# --- the happy path ------------------------------------------------------------------------


async def test_chat_streams_pieces_then_finish_and_upstream_usage(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, openai_chat(["Hel", "lo!"], usage=(11, 2)))
    pieces = await collect(backend.chat(Call.of(chat_request(), "gpt-4o-mini")))
    assert pieces == [
        Piece(content="Hel"),
        Piece(content="lo!"),
        Piece(finish_reason="stop", usage=usage(11, 2)),
    ]


async def test_chat_forwards_the_request_with_model_streaming_and_credentials(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, openai_chat(["ok"]))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    request = chat_request(
        stream=False,
        stream_options=StreamOptions(include_usage=False),
        max_tokens=50,
        temperature=0.2,
        stop=["\n\n"],
        seed=7,
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        user="end-user-1",
    )
    await collect(backend.chat(Call.of(request, "gpt-4o-mini")))
    received = upstream.last
    assert (received.method, received.path, received.query) == ("POST", CHAT, {})
    assert received.headers["authorization"] == f"Bearer {SECRET}"
    assert received.headers["x-org"] == "llmq-test"
    assert received.headers["content-type"] == "application/json"
    assert "api-key" not in received.headers
    assert received.json() == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.2,
        "stop": ["\n\n"],
        "seed": 7,
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "user": "end-user-1",
    }


async def test_include_usage_option_false_omits_stream_options(
    upstream: FakeUpstream, make: Make
) -> None:
    upstream.route(CHAT, openai_chat(["ok"], usage=None))
    reply = ReplyTo("chatcmpl-job", "public", 5, include_usage=True)
    outs = await collect_outs(make(include_usage=False).chat(Call.of(chat_request(), "m", reply)))
    assert "stream_options" not in upstream.last.json()
    # The client asked for usage the upstream did not send: counted, and sent as its chunk.
    last = chunks_of(outs)[-1]
    assert (last["choices"], last["usage"]["completion_tokens"]) == ([], 1)


async def test_tool_call_deltas_pass_through_with_finish_tool_calls(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    head = {
        "index": 0,
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    chunks = [
        openai_chunk({"role": "assistant", "content": None, "tool_calls": [head]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        openai_chunk({}, "tool_calls"),
    ]
    upstream.route(CHAT, Reply(chunks=sse_data(chunks), content_type="text/event-stream"))
    pieces = await collect(backend.chat(Call.of(chat_request(), "m")))
    assert [p.tool_calls for p in pieces[:3]] == [
        [head],
        [{"index": 0, "function": {"arguments": '{"city":'}}],
        [{"index": 0, "function": {"arguments": '"Paris"}'}}],
    ]
    assert all(p.content is None for p in pieces)
    assert pieces[-1].finish_reason == "tool_calls"
    # No usage upstream: prompt "Be brief." + "Say hi" = 4 words, '{"city":"Paris"}' = 1.
    assert pieces[-1].usage == Usage(4, 1, 5)


async def test_usage_is_counted_when_the_upstream_sends_none(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, openai_chat(["Hello", " big", " world"], finish="length", usage=None))
    pieces = await collect(backend.chat(Call.of(chat_request(), "m")))
    assert pieces[-1] == Piece(finish_reason="length", usage=Usage(4, 3, 7))


async def test_llama_cpp_style_usage_in_finish_chunk_and_no_done(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    chunks = [
        openai_chunk({"content": "Hi"}),
        openai_chunk({}, "stop", usage={"prompt_tokens": 9, "completion_tokens": 1}),
    ]
    body = sse_data(chunks, done=False)
    upstream.route(CHAT, Reply(chunks=body, content_type="text/event-stream"))
    pieces = await collect(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="Hi"), Piece(finish_reason="stop", usage=Usage(9, 1, 10))]


async def test_sse_framing_variants_are_decoded(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    """Events split across TCP chunks, CRLF endings, `data:` without a space, comments."""
    body = (
        b": keep-alive\r\n\r\n"
        b'data:{"choices":[{"index":0,"delta":{"content":"A"}}]}\r\n\r\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"B"}},'
        b'{"index":1,"delta":{"content":"other choice"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    upstream.route(CHAT, Reply(chunks=pieces, content_type="text/event-stream"))
    got = await collect(backend.chat(Call.of(chat_request(), "m")))
    assert [p.content for p in got] == ["A", "B", None]
    assert got[-1].finish_reason == "stop"


async def test_completion_streams_text_deltas(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route("/v1/completions", openai_completion(["Once", " upon"], usage=(4, 2)))
    request = CompletionRequest(model="public", prompt="Tell me a story", max_tokens=2)
    pieces = await collect(backend.complete(Call.of(request, "gpt-3.5-turbo-instruct")))
    assert pieces == [
        Piece(content="Once"),
        Piece(content=" upon"),
        Piece(finish_reason="stop", usage=usage(4, 2)),
    ]
    assert upstream.last.json() == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Tell me a story",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 2,
    }


async def test_embeddings_are_ordered_by_index_and_asked_as_floats(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.5, 0.25]},
            {"object": "embedding", "index": 0, "embedding": [0.1, -0.2]},
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    upstream.route("/v1/embeddings", json_reply(200, payload))
    request = EmbeddingRequest(model="public", input=["a b", "c"], encoding_format="base64")
    result = await backend.embed(request, "text-embedding-3-small")
    assert result.vectors == [[0.1, -0.2], [0.5, 0.25]]
    assert result.usage == Usage(6, 0, 6)
    assert upstream.last.json() == {"model": "text-embedding-3-small", "input": ["a b", "c"]}


async def test_embedding_usage_is_counted_when_missing(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    payload = {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2.0]}]}
    upstream.route("/v1/embeddings", json_reply(200, payload))
    result = await backend.embed(EmbeddingRequest(model="p", input=[[1, 2, 3], [4]]), "m")
    assert result.usage == Usage(4, 0, 4)


# --- Azure ---------------------------------------------------------------------------------


async def test_azure_deployment_url_api_version_and_api_key_header(
    upstream: FakeUpstream, make: Make
) -> None:
    backend = make(url=upstream.url, azure_deployment="gpt4o-prod", api_version="2024-06-01")
    upstream.route("/openai/deployments/gpt4o-prod/chat/completions", openai_chat(["ok"]))
    pieces = await collect(backend.chat(Call.of(chat_request(), "gpt-4o")))
    assert pieces[0] == Piece(content="ok")
    received = upstream.last
    assert received.query == {"api-version": "2024-06-01"}
    assert received.headers["api-key"] == SECRET
    assert "authorization" not in received.headers


async def test_azure_with_api_version_only_uses_the_upstream_model_as_deployment(
    upstream: FakeUpstream, make: Make
) -> None:
    backend = make(url=upstream.url, api_version="2024-10-21")
    payload = {"data": [{"index": 0, "embedding": [1.0]}], "usage": {"prompt_tokens": 1}}
    upstream.route("/openai/deployments/emb-large/embeddings", json_reply(200, payload))
    await backend.embed(EmbeddingRequest(model="p", input="x"), "emb-large")
    assert upstream.last.query == {"api-version": "2024-10-21"}
    upstream.route("/openai/models", json_reply(200, {"data": []}))
    assert await backend.probe() is True
    assert upstream.last.path == "/openai/models"
    assert upstream.last.query == {"api-version": "2024-10-21"}


# --- upstream HTTP errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "type_", "code", "message"),
    [
        (
            openai_error(400, "'messages' must contain at least one item", param="messages"),
            400,
            "invalid_request_error",
            None,
            "'messages' must contain at least one item",
        ),
        (
            openai_error(
                404,
                "The model `gpt-9` does not exist or you do not have access to it.",
                code="model_not_found",
            ),
            404,
            "invalid_request_error",
            "model_not_found",
            "The model `gpt-9` does not exist or you do not have access to it.",
        ),
        (
            openai_error(422, "temperature must be <= 2", code="invalid_value"),
            400,
            "invalid_request_error",
            "invalid_value",
            "temperature must be <= 2",
        ),
        (  # vLLM's older top-level error object
            json_reply(
                400,
                {
                    "object": "error",
                    "message": "This model's maximum context length is 4096 tokens.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                },
            ),
            400,
            "invalid_request_error",
            None,
            "This model's maximum context length is 4096 tokens.",
        ),
        (
            openai_error(500, "The server had an error processing your request.", "server_error"),
            502,
            "upstream_error",
            "upstream_unavailable",
            "upstream error (HTTP 500): The server had an error processing your request.",
        ),
        (
            Reply(status=503, chunks=[b"upstream connect error"], content_type="text/plain"),
            502,
            "upstream_error",
            "upstream_unavailable",
            "upstream error (HTTP 503): upstream connect error",
        ),
    ],
)
async def test_upstream_error_status_and_message_are_mapped(
    upstream: FakeUpstream,
    backend: OpenAIBackend,
    reply: Reply,
    status: int,
    type_: str,
    code: str | None,
    message: str,
) -> None:
    upstream.route(CHAT, reply)
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == []
    assert (error.status, error.type, error.code, error.message) == (status, type_, code, message)
    assert error.retryable is (status == 502)


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_auth_failure_is_a_502_that_does_not_echo_the_key(
    upstream: FakeUpstream, backend: OpenAIBackend, status: int
) -> None:
    message = "Incorrect API key provided: sk-test-***cdef."
    upstream.route(CHAT, openai_error(status, message, code="invalid_api_key"))
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert (error.status, error.type, error.retryable) == (502, "upstream_auth_error", False)
    assert error.message == f"the upstream rejected this worker's credentials (HTTP {status})"


async def test_rate_limit_is_a_retryable_429_with_retry_after_seconds(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    message = "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3."
    reply = openai_error(
        429, message, "requests", "rate_limit_exceeded", headers={"retry-after": "7"}
    )
    upstream.route(CHAT, reply)
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert (error.status, error.type, error.retryable) == (429, "rate_limit_error", True)
    assert error.retry_after == 7.0
    assert error.message == message


async def test_retry_after_as_http_date(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    upstream.route(CHAT, openai_error(429, "slow down", headers={"retry-after": when}))
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert error.retry_after is not None
    assert 28 <= error.retry_after <= 30


async def test_embedding_errors_use_the_same_mapping(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route("/v1/embeddings", openai_error(400, "input is too long", param="input"))
    with pytest.raises(BackendError) as caught:
        await backend.embed(EmbeddingRequest(model="p", input="x"), "m")
    assert (caught.value.status, caught.value.message) == (400, "input is too long")
    assert caught.value.param == "input"


# --- transport failures --------------------------------------------------------------------


async def test_connection_refused_is_a_retryable_502(make: Make) -> None:
    backend = make(url=f"http://127.0.0.1:{refused_port()}/v1")
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert (error.status, error.code, error.retryable) == (502, "upstream_unavailable", True)
    assert await backend.probe() is False


async def test_connection_closed_before_the_response_is_a_retryable_502(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, Reply(drop_before_headers=True))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == []
    assert (error.status, error.type, error.retryable) == (502, "upstream_error", True)


async def test_connection_dropped_before_the_first_token_is_retryable(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    # The role chunk arrives (no piece for the caller yet), then the socket closes.
    reply = openai_chat(["never"], drop_after=1)
    upstream.route(CHAT, reply)
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == []
    assert (error.status, error.code, error.retryable) == (502, "upstream_unavailable", True)


async def test_connection_dropped_after_the_first_token_is_not_retryable(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, openai_chat(["one", " two"], drop_after=2))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="one")]
    assert (error.status, error.code, error.retryable) == (502, "upstream_unavailable", False)


async def test_stream_that_ends_without_a_finish_is_an_error(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    body = sse_data([openai_chunk({"content": "par"})], done=False)
    upstream.route(CHAT, Reply(chunks=body, content_type="text/event-stream"))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="par")]
    assert (error.status, error.code, error.retryable) == (502, "upstream_disconnected", False)


async def test_malformed_event_after_the_first_token(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    body = [*sse_data([openai_chunk({"content": "ok"})], done=False), b'data: {"choices": [\n\n']
    upstream.route(CHAT, Reply(chunks=body, content_type="text/event-stream"))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="ok")]
    assert (error.status, error.code, error.retryable) == (502, "upstream_malformed", False)


async def test_error_event_in_the_stream(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    failure = {"error": {"message": "CUDA out of memory", "type": "server_error", "code": None}}
    body = sse_data([openai_chunk({"content": "ok"}), failure])
    upstream.route(CHAT, Reply(chunks=body, content_type="text/event-stream"))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="ok")]
    assert (error.status, error.retryable) == (502, False)
    assert error.message == "upstream error: CUDA out of memory"


async def test_llama_cpp_error_field(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    body = [b'error: {"code":500,"message":"failed to decode","type":"server_error"}\n\n']
    upstream.route(CHAT, Reply(chunks=body, content_type="text/event-stream"))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == []
    assert (error.status, error.message) == (502, "upstream error: failed to decode")


# --- timeouts and cancellation -------------------------------------------------------------


async def test_no_response_within_first_token_timeout_is_a_504(
    upstream: FakeUpstream, make: Make
) -> None:
    backend = make(Timeouts(connect=1, first_token=0.2, between_tokens=5, total=5))
    upstream.route(CHAT, openai_chat(["late"], delay=2))
    started = time.monotonic()
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert time.monotonic() - started < 1.0
    assert (error.status, error.type, error.code) == (504, "timeout", "upstream_timeout")
    assert error.message == "upstream timed out: no first token within 0.2s"


async def test_headers_but_no_first_token_is_a_first_token_timeout(
    upstream: FakeUpstream, make: Make
) -> None:
    backend = make(Timeouts(connect=1, first_token=0.2, between_tokens=5, total=5))
    upstream.route(CHAT, openai_chat(["late"], hang_after=1))  # only the role chunk
    _, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert (error.status, error.message) == (504, "upstream timed out: no first token within 0.2s")


async def test_silence_between_tokens_is_a_504(upstream: FakeUpstream, make: Make) -> None:
    backend = make(Timeouts(connect=1, first_token=5, between_tokens=0.2, total=5))
    upstream.route(CHAT, openai_chat(["one", " two"], hang_after=2))
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert pieces == [Piece(content="one")]
    assert (error.status, error.type, error.retryable) == (504, "timeout", False)
    assert error.message == "upstream timed out: no token for 0.2s"


async def test_total_timeout_bounds_a_steady_stream(upstream: FakeUpstream, make: Make) -> None:
    backend = make(Timeouts(connect=1, first_token=5, between_tokens=5, total=0.5))
    upstream.route(CHAT, openai_chat([f" w{i}" for i in range(20)], gap=0.1))
    started = time.monotonic()
    pieces, error = await collect_until_error(backend.chat(Call.of(chat_request(), "m")))
    assert time.monotonic() - started < 1.5
    assert 1 <= len(pieces) < 20
    assert (error.status, error.message) == (
        504,
        "upstream timed out: the call took longer than 0.5s",
    )


async def test_cancelling_the_consumer_closes_the_upstream_stream(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, openai_chat(["one", " two"], hang_after=2))
    await assert_cancel_closes_upstream(upstream, backend.chat(Call.of(chat_request(), "m")))


async def test_connections_are_reused_between_calls(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, openai_chat(["a"]))
    for _ in range(3):
        await collect(backend.chat(Call.of(chat_request(), "m")))
    assert len(upstream.received) == 3
    assert upstream.connections == 1


# --- probe and lifecycle -------------------------------------------------------------------


@pytest.mark.parametrize(("status", "up"), [(200, True), (401, True), (404, True), (500, False)])
async def test_probe_gets_models(
    upstream: FakeUpstream, backend: OpenAIBackend, status: int, up: bool
) -> None:
    upstream.route("/v1/models", json_reply(status, {"object": "list", "data": []}))
    assert await backend.probe() is up
    assert (upstream.last.method, upstream.last.path) == ("GET", "/v1/models")
    assert upstream.last.headers["authorization"] == f"Bearer {SECRET}"


async def test_probe_timeout_is_down(upstream: FakeUpstream, make: Make) -> None:
    backend = make(Timeouts(connect=1, first_token=0.2, between_tokens=1, total=1))
    upstream.route("/v1/models", Reply(delay=2))
    assert await backend.probe() is False


async def test_repr_has_no_secret_and_aclose_closes_the_client(make: Make) -> None:
    backend = make()
    assert SECRET not in repr(backend)
    await backend.aclose()
    await asyncio.sleep(0)
    assert backend._upstream.client.is_closed


# --- pass-through (issue 10) -----------------------------------------------------------------


async def test_the_body_goes_through_byte_for_byte_but_model_and_stream(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, openai_chat(["ok"]))
    raw = (
        b'{"model":"public","messages":[{"role":"user","content":"hi"}],'
        b'"stream":false,"top_k": 40,"min_p":0.050,"guided_json":{"type" : "object"}}'
    )
    request = chat_request()
    await collect(backend.chat(Call.of(request, "served", body=raw)))
    assert upstream.last.body == (
        b'{"model":"served","messages":[{"role":"user","content":"hi"}],'
        b'"stream":true,"top_k":40,"min_p":0.050,"guided_json":{"type" : "object"},'
        b'"stream_options":{"include_usage":true}}'
    )


async def test_chunks_are_relayed_with_only_id_and_model_rewritten(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.route(CHAT, openai_chat(["Hel"], usage=(3, 1)))
    reply = ReplyTo("chatcmpl-job", "public", 5, include_usage=False)
    outs = await collect_outs(backend.chat(Call.of(chat_request(stream=True), "m", reply)))
    chunks = chunks_of(outs)
    first = openai_chunk({"role": "assistant", "content": "", "refusal": None})
    first |= {"id": "chatcmpl-job", "model": "public"}
    del first["usage"]  # llmq asked for the usage, the client did not
    assert chunks[0] == first
    assert [c["choices"] for c in chunks] == [
        first["choices"],
        [{"index": 0, "delta": {"content": "Hel"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
    ]  # the usage-only chunk is not relayed
    assert [o.tokens for o in outs] == [False, True, False, False]
    assert outs[-1].usage == usage(3, 1)


async def test_every_choice_is_relayed_and_counted(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    chunks = [
        openai_chunk({"content": "a b"}) | {"choices": [
            {"index": 0, "delta": {"content": "a b"}, "finish_reason": None},
            {"index": 1, "delta": {"content": "c"}, "finish_reason": None},
        ]},
        openai_chunk({}, "stop") | {"choices": [
            {"index": 1, "delta": {}, "finish_reason": "length"},
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        ]},
    ]  # fmt: skip
    upstream.route(CHAT, Reply(chunks=sse_data(chunks), content_type="text/event-stream"))
    reply = ReplyTo("chatcmpl-job", "public", 5, include_usage=True)
    outs = await collect_outs(backend.chat(Call.of(chat_request(n=2), "m", reply)))
    indexes = [c["index"] for chunk in chunks_of(outs) for c in chunk["choices"]]
    assert indexes == [0, 1, 1, 0]
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].usage is not None and outs[-1].usage.completion_tokens == 3  # no usage sent
