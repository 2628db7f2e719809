"""Ollama's native API: `/api/chat` and `/api/generate` NDJSON streams, `/api/embed`.

Native rather than Ollama's OpenAI layer because only the native API takes `keep_alive`,
`num_ctx` and reports exact prompt and output counts. Sampling fields of the request go into
`options`, `reasoning_effort` into `think`, `response_format` into `format`; `tool_choice`
"none" sends no tools; a field it cannot honour is a 400 naming it (`CHAT_FIELDS`).
`keep_alive` and `num_ctx` come from `OllamaOptions`. `url` is e.g.
`http://host:11434`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgspec
from msgspec import UNSET, Struct

from llmq.schemas.envelope import JOB_KINDS, JobKind
from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    Usage,
)
from llmq.schemas.text import count_tokens, message_text, prompt_tokens
from llmq.worker.backends.base import (
    BackendConfig,
    BackendError,
    Call,
    Embeddings,
    OllamaOptions,
    Out,
    unsupported_parameter,
)
from llmq.worker.backends.params import check_fields, top_k
from llmq.worker.chunks import ChatChunks, Chunks, TextChunks
from llmq.worker.upstream.calls import Upstream, base_url
from llmq.worker.upstream.error_mapping import ended_early, malformed, stream_error
from llmq.worker.upstream.ndjson import NDJSONDecoder
from llmq.worker.upstream.usage import Tally


class _Function(Struct):
    name: str = ""
    arguments: dict[str, Any] | str = {}


class _ToolCall(Struct):
    """A tool call as Ollama sends it (typed: a value of the wrong type is a malformed
    reply, 502, not a crash or a wrong-typed chunk for the client)."""

    id: str | None = None
    function: _Function | None = None


class _Message(Struct):
    content: str = ""
    thinking: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Line(Struct):
    """One NDJSON line of /api/chat (`message`) or /api/generate (`response`)."""

    message: _Message | None = None
    response: str | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: Any = None


class _Embedded(Struct):
    embeddings: list[list[float]]
    prompt_eval_count: int | None = None


BACKEND = "ollama"
_SAMPLING = frozenset(
    {"max_tokens", "temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"}
)
CHAT_FIELDS = _SAMPLING | {
    "messages",
    "max_completion_tokens",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
}
"""What /api/chat honours (options, tools, format, think); anything else is a 400."""
COMPLETION_FIELDS = _SAMPLING | {"prompt", "stop", "suffix"}

_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_lines = NDJSONDecoder(_Line)
_embedded_decoder = msgspec.json.Decoder(_Embedded)


def _invalid(message: str) -> BackendError:
    return BackendError(message, status=400, type="invalid_request_error")


class _NDJSONStream:
    """One JSON object a line until `"done": true`, which carries the counts; each line
    becomes an OpenAI chunk of choice 0 (thinking as `reasoning_content`)."""

    def __init__(self, chunks: Chunks, tally: Tally) -> None:
        self.done = False
        self._chunks = chunks
        self._tally = tally
        self._tools = 0

    def feed(self, line: str) -> list[Out]:
        item = _lines.feed(line)
        if item is None:
            return []
        if item.error is not None:
            raise stream_error({"error": item.error})
        outs = []
        message = item.message
        if message is not None and message.thinking:
            self._tally.add(message.thinking)
            outs.append(self._chunks.delta(reasoning=message.thinking))
        text = message.content if message else item.response
        tools = self._tool_calls(message.tool_calls if message else None)
        if text or tools:
            self._tally.add(text)
            outs.append(self._chunks.delta(content=text or None, tool_calls=tools))
        if item.done:
            self.done = True
            if item.done_reason == "length":
                finish = "length"
            elif self._tools:
                finish = "tool_calls"
            else:
                finish = "stop"
            usage = self._tally.usage(item.prompt_eval_count, item.eval_count)
            outs += [self._chunks.finish(0, finish), self._chunks.end(usage, finish)]
        return outs

    def eof(self) -> list[Out]:
        raise ended_early()

    def _tool_calls(self, calls: list[_ToolCall] | None) -> list[dict[str, Any]] | None:
        """Ollama sends whole calls with object arguments; OpenAI deltas carry index, id, JSON."""
        if not calls:
            return None
        out = []
        for call in calls:
            function = call.function or _Function()
            arguments = function.arguments
            if not isinstance(arguments, str):
                arguments = _encoder.encode(arguments).decode()
            self._tally.add(arguments)
            out.append(
                {
                    "index": self._tools,
                    "id": call.id or f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": function.name, "arguments": arguments},
                }
            )
            self._tools += 1
        return out


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama's messages; a tool result names its call (`tool_call_id`) and its function
    (`tool_name`: the message's `name`, else the name of the call it answers)."""
    names: dict[str, str] = {}
    out = []
    for message in messages:
        for call in message.tool_calls or ():
            names[str(call.get("id", ""))] = (call.get("function") or {}).get("name", "")
        converted = _message(message)
        if converted["role"] == "tool":
            call_id = message.tool_call_id if isinstance(message.tool_call_id, str) else ""
            name = message.name if isinstance(message.name, str) else names.get(call_id, "")
            if call_id:
                converted["tool_call_id"] = call_id
            if name:
                converted["tool_name"] = name
        out.append(converted)
    return out


def _message(message: Message) -> dict[str, Any]:
    role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
    out: dict[str, Any] = {"role": role, "content": message_text(message)}
    if isinstance(message.content, list):
        images = [_image(part) for part in message.content if part.get("type") == "image_url"]
        if images:
            out["images"] = images
    if message.tool_calls:
        out["tool_calls"] = [_tool_call(call) for call in message.tool_calls]
    return out


def _image(part: dict[str, Any]) -> str:
    """Ollama takes bare base64; only data: URLs carry it."""
    image = part.get("image_url")
    url = image.get("url", "") if isinstance(image, dict) else str(image or "")
    head, sep, data = url.partition(",")
    if not (url.startswith("data:") and sep and head.endswith(";base64")):
        raise _invalid("images must be base64 data: URLs; a worker fetches no URL")
    return data


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = _json_decoder.decode(arguments)
        except msgspec.DecodeError:
            raise _invalid("tool call arguments must be a JSON object") from None
    return {"function": {"name": function.get("name", ""), "arguments": arguments}}


def _format(response_format: Any) -> Any:
    """json_object → "json", json_schema → the schema (Ollama's structured outputs)."""
    if not isinstance(response_format, dict) or response_format.get("type") in (None, "text"):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or "json"
    raise unsupported_parameter("response_format", BACKEND, f"type {response_format['type']!r}")


def _tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools to send: none for `tool_choice: "none"`; Ollama cannot force a call."""
    choice = request.tool_choice
    if choice in (None, UNSET, "auto"):
        return request.tools or None
    if choice == "none":
        return None
    raise unsupported_parameter("tool_choice", BACKEND, "Ollama cannot force a tool call")


def _think(effort: Any) -> bool | str | None:
    """`reasoning_effort` as Ollama's `think`: off for "none", the level otherwise."""
    if effort is None or effort is UNSET:
        return None
    if effort == "none":
        return False
    if effort in ("low", "medium", "high"):
        return str(effort)
    raise unsupported_parameter("reasoning_effort", BACKEND, f"unknown effort {effort!r}")


class OllamaBackend:
    kinds: ClassVar[frozenset[JobKind]] = frozenset(JOB_KINDS) - {"endpoint"}

    def __init__(self, config: BackendConfig) -> None:
        self._base = base_url(config, "http://127.0.0.1:11434")
        auth = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._upstream = Upstream(config, auth, self._base)
        self._extra: dict[str, Any] = {}
        options = config.options_of(OllamaOptions)
        if options.keep_alive:
            self._extra["keep_alive"] = _number_or_text(options.keep_alive)
        self._num_ctx = options.num_ctx or None

    def __repr__(self) -> str:
        return f"OllamaBackend(url={self._base!r})"

    def _options(
        self, request: ChatCompletionRequest | CompletionRequest, limit: int | None, body: bytes
    ) -> dict[str, Any]:
        options: dict[str, Any] = {}
        set_if(options, "top_k", top_k(body))
        set_if(options, "temperature", request.temperature)
        set_if(options, "top_p", request.top_p)
        set_if(options, "seed", request.seed)
        set_if(options, "presence_penalty", request.presence_penalty)
        set_if(options, "frequency_penalty", request.frequency_penalty)
        set_if(options, "num_predict", limit)
        stop = request.stop
        if isinstance(stop, str):
            options["stop"] = [stop]
        elif stop:
            options["stop"] = stop
        if self._num_ctx:
            options["num_ctx"] = self._num_ctx
        return options

    def chat(self, call: Call) -> AsyncIterator[Out]:
        request = call.request
        assert isinstance(request, ChatCompletionRequest)

        def body() -> bytes:
            check_fields(call, CHAT_FIELDS, BACKEND)
            if request.parallel_tool_calls is False:
                raise unsupported_parameter("parallel_tool_calls", BACKEND)
            payload: dict[str, Any] = {
                "model": call.upstream_model,
                "messages": _messages(request.messages),
                "stream": True,
                **self._extra,
            }
            options = self._options(request, request.token_limit(), call.body)
            if options:
                payload["options"] = options
            tools = _tools(request)
            if tools:
                payload["tools"] = tools
            fmt = _format(request.response_format)
            if fmt is not None:
                payload["format"] = fmt
            think = _think(request.reasoning_effort)
            if think is not None:
                payload["think"] = think
            return _encoder.encode(payload)

        tally = Tally(lambda: prompt_tokens(request.messages))
        stream = _NDJSONStream(ChatChunks(call.reply), tally)
        return self._upstream.stream(f"{self._base}/api/chat", body, stream)

    def complete(self, call: Call) -> AsyncIterator[Out]:
        request = call.request
        assert isinstance(request, CompletionRequest)
        prompts = request.prompts()

        def body() -> bytes:
            check_fields(call, COMPLETION_FIELDS, BACKEND)
            if len(prompts) != 1:
                raise _invalid("the ollama backend takes exactly one prompt per request")
            if not isinstance(prompts[0], str):
                raise _invalid("the ollama backend takes a text prompt, not token ids")
            payload: dict[str, Any] = {
                "model": call.upstream_model,
                "prompt": prompts[0],
                "stream": True,
                **self._extra,
            }
            limit = request.max_tokens if isinstance(request.max_tokens, int) else None
            options = self._options(request, limit, call.body)
            if options:
                payload["options"] = options
            set_if(payload, "suffix", request.suffix)
            return _encoder.encode(payload)

        tally = Tally(
            lambda: sum(count_tokens(p) if isinstance(p, str) else len(p) for p in prompts)
        )
        stream = _NDJSONStream(TextChunks(call.reply), tally)
        return self._upstream.stream(f"{self._base}/api/generate", body, stream)

    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> Embeddings:
        inputs = request.input
        if not (isinstance(inputs, str) or all(isinstance(item, str) for item in inputs)):
            raise _invalid("the ollama backend embeds text only, not token ids")

        def body() -> bytes:
            payload: dict[str, Any] = {"model": upstream_model, "input": inputs, **self._extra}
            set_if(payload, "dimensions", request.dimensions)
            return _encoder.encode(payload)

        raw = await self._upstream.post(f"{self._base}/api/embed", body)
        try:
            reply = _embedded_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise malformed(str(exc)) from None
        tokens = reply.prompt_eval_count
        if tokens is None:
            texts = [inputs] if isinstance(inputs, str) else inputs
            tokens = sum(count_tokens(str(text)) for text in texts)
        return Embeddings(vectors=reply.embeddings, usage=Usage(tokens, 0, tokens))

    async def probe(self) -> bool:
        return await self._upstream.probe(f"{self._base}/api/version")

    async def aclose(self) -> None:
        await self._upstream.aclose()


def set_if(target: dict[str, Any], key: str, value: Any) -> None:
    """Copy an optional request field: skips None and msgspec.UNSET."""
    if value is not None and value is not msgspec.UNSET:
        target[key] = value


def _number_or_text(value: str) -> int | float | str:
    """`keep_alive` "300" or "-1" must be a JSON number; "5m" stays a duration string."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value
