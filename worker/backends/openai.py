"""Any OpenAI-compatible server: OpenAI, Azure OpenAI, vLLM, llama.cpp, LM Studio, TGI.

A pass-through: the client's JSON is forwarded as it came, byte for byte, with only the model
name, `stream` and `stream_options` (usage) changed, so every field (`reasoning_effort`,
vLLM's `top_k`, `guided_json`, ...) reaches the server; each SSE chunk is relayed with only
its id and model rewritten (`_Relay`). A client that asks for no stream gets none from the
upstream either: one non-streamed call whose JSON body is relayed (`openai_whole`). `url` is
the base including `/v1`. Azure is selected
by the `azure_deployment` or `api_version` option:
`{url}/openai/deployments/{deployment}/...?api-version=...` with the `api-key` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec
from msgspec import UNSET, Struct

from llmq.schemas.envelope import JOB_KINDS, JobKind
from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Usage,
    patch_body,
    raw_fields_decoder,
)
from llmq.schemas.text import count_tokens, prompt_tokens
from llmq.worker.backends.base import BackendConfig, Call, Embeddings, OpenAIOptions, Out
from llmq.worker.backends.openai_whole import (
    OMITTED_WHEN_NULL,
    UpstreamToolCall,
    UpstreamUsage,
    final_usage,
    relay_whole,
)
from llmq.worker.chunks import ChatChunks, TextChunks
from llmq.worker.upstream.calls import Upstream, base_url
from llmq.worker.upstream.error_mapping import ended_early, malformed, stream_error
from llmq.worker.upstream.sse import SSEDecoder
from llmq.worker.upstream.usage import Tally

AZURE_API_VERSION = "2024-10-21"


class _Delta(Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[UpstreamToolCall] | None = None


class _Choice(Struct):
    index: int = 0
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Chunk(Struct):
    choices: list[_Choice] | None = None
    usage: UpstreamUsage | None = None
    error: Any = None


class _Vector(Struct):
    embedding: list[float]
    index: int = 0


class _EmbeddingList(Struct):
    data: list[_Vector]
    usage: Usage | None = None


_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_choices_decoder = msgspec.json.Decoder(list[_Choice] | None)
_usage_decoder = msgspec.json.Decoder(UpstreamUsage | None)
_chunk_decoder = msgspec.json.Decoder(_Chunk)
_embedding_decoder = msgspec.json.Decoder(_EmbeddingList)
_NULL = b"null"


class _Relay:
    """`data: {chunk}` events until `data: [DONE]`, relayed as they came.

    Each chunk's top-level fields are read as raw bytes: `id` and `model` are replaced by
    llmq's, a null system_fingerprint or service_tier is left out, the usage is kept only if
    the client asked for it; every other byte (all choices with their index, logprobs,
    reasoning, refusals, tool calls, fields llmq does not know) reaches the client as the
    upstream sent it. Only the choices and the usage are decoded, for the accounting.
    """

    def __init__(self, call: Call, tally: Tally, completion: bool) -> None:
        self.done = False
        self._sse = SSEDecoder()
        self._tally = tally
        self._completion = completion
        self._id = msgspec.Raw(_encoder.encode(call.reply.id))
        self._model = msgspec.Raw(_encoder.encode(call.reply.model))
        self._include_usage = call.reply.include_usage
        self._folded = not call.request.stream
        self._chunks = TextChunks(call.reply) if completion else ChatChunks(call.reply)
        self._finish: str | None = None
        self._usage: Usage | None = None

    def feed(self, line: str) -> list[Out]:
        event = self._sse.feed(line)
        return self._event(*event) if event else []

    def eof(self) -> list[Out]:
        event = self._sse.flush()
        outs = self._event(*event) if event else []
        if self.done:
            return outs
        if self._finish is None:
            raise ended_early()
        return [*outs, self._final()]  # a server that omits [DONE]

    def _event(self, name: str, data: str) -> list[Out]:
        if data.strip() == "[DONE]":
            self.done = True
            return [self._final()]
        if name == "error":
            raise stream_error(_json_decoder.decode(data))
        if self._folded:
            return self._fold_input(data)
        fields = raw_fields_decoder.decode(data)
        error = fields.get("error")
        if error is not None and bytes(error) != _NULL:
            raise stream_error({"error": _json_decoder.decode(error)})
        tokens = self._count(fields.get("choices"))
        usage = fields.get("usage")
        if usage is not None and bytes(usage) != _NULL:
            counted = _usage_decoder.decode(usage)
            if counted is not None:
                self._usage = counted.typed()
                if self._include_usage:
                    fields["usage"] = msgspec.Raw(_encoder.encode(self._usage))
        if not self._include_usage and "usage" in fields:
            del fields["usage"]  # asked for by llmq, not by the client
            if not tokens and bytes(fields.get("choices", b"[]")).strip() == b"[]":
                return []
        for key in OMITTED_WHEN_NULL:
            value = fields.get(key)
            if value is not None and bytes(value) == _NULL:
                del fields[key]
        if "id" in fields:
            fields["id"] = self._id
        if "model" in fields:
            fields["model"] = self._model
        return [Out(_encoder.encode(fields), tokens=tokens)]

    def _fold_input(self, data: str) -> list[Out]:
        """A non-streamed request: the chunk goes to `Fold` as the upstream sent it (the fold
        sets id and model, drops nulls and takes the usage from the last Out), so only the
        choices and the usage are decoded, once."""
        chunk = _chunk_decoder.decode(data)
        if chunk.error is not None:
            raise stream_error({"error": chunk.error})
        tokens = self._tally_choices(chunk.choices or ())
        if chunk.usage is not None:
            self._usage = chunk.usage.typed()
        return [Out(data.encode(), tokens=tokens)]

    def _count(self, raw: msgspec.Raw | None) -> bool:
        """Tally every choice's output; True when the chunk carries any."""
        if raw is None:
            return False
        return self._tally_choices(_choices_decoder.decode(raw) or ())

    def _tally_choices(self, choices: Iterable[_Choice]) -> bool:
        tokens = False
        for choice in choices:
            if choice.finish_reason and (choice.index == 0 or self._finish is None):
                self._finish = choice.finish_reason
            if self._completion:
                if choice.text:
                    self._tally.add(choice.text, choice.index)
                    tokens = True
                continue
            delta = choice.delta
            if delta is None:
                continue
            for text in (delta.content, delta.reasoning_content, delta.reasoning, delta.refusal):
                if text:
                    self._tally.add(text, choice.index)
                    tokens = True
            for call in delta.tool_calls or ():
                tokens = True
                if call.function is not None:
                    self._tally.add(call.function.arguments, choice.index)
        return tokens

    def _final(self) -> Out:
        usage = final_usage(self._usage, self._tally)
        chunk = b""
        if self._include_usage and self._usage is None:
            # The client asked for a usage chunk the upstream did not send (`--no-stream-usage`).
            chunk = self._chunks.end(usage, "stop").chunk
        return Out(chunk, usage=usage, finish_reason=self._finish or "stop")


class OpenAIBackend:
    kinds: ClassVar[frozenset[JobKind]] = frozenset(JOB_KINDS)

    def __init__(self, config: BackendConfig) -> None:
        options = config.options_of(OpenAIOptions)
        self._base = base_url(config, "https://api.openai.com/v1")
        self._deployment = options.azure_deployment
        self._azure = bool(options.azure_deployment or options.api_version)
        self._api_version = options.api_version or AZURE_API_VERSION
        self._include_usage = options.include_usage
        auth: dict[str, str] = {}
        if config.api_key:
            auth = (
                {"api-key": config.api_key}
                if self._azure
                else {"authorization": f"Bearer {config.api_key}"}
            )
        self._upstream = Upstream(config, auth, self._base)

    def __repr__(self) -> str:
        return f"OpenAIBackend(url={self._base!r}, azure={self._azure})"

    def _endpoint(self, path: str, upstream_model: str) -> tuple[str, dict[str, str] | None]:
        if not self._azure:
            return f"{self._base}/{path}", None
        deployment = quote(self._deployment or upstream_model, safe="")
        return (
            f"{self._base}/openai/deployments/{deployment}/{path}",
            {"api-version": self._api_version},
        )

    def _body(self, call: Call) -> Callable[[], bytes]:
        """The client's JSON as the upstream gets it: only the model name, `stream` and
        `stream_options` change; every other field keeps its exact bytes."""

        def body() -> bytes:
            options = {"include_usage": True} if self._include_usage else UNSET
            changes = {"model": call.upstream_model, "stream": True, "stream_options": options}
            return patch_body(call.body, changes)

        return body

    def _whole_body(self, call: Call) -> Callable[[], bytes]:
        """A non-streamed call: only the model name changes (and `stream_options`, which
        OpenAI refuses without a stream, is left out)."""
        return lambda: patch_body(
            call.body, {"model": call.upstream_model, "stream_options": UNSET}
        )

    async def _whole(
        self, url: str, params: dict[str, str] | None, call: Call, tally: Tally, completion: bool
    ) -> AsyncIterator[Out]:
        """The client wants one body: ask the upstream for one (`openai_whole`)."""
        raw = await self._upstream.post(url, self._whole_body(call), params)
        yield relay_whole(raw, call.reply, tally, completion)

    def chat(self, call: Call) -> AsyncIterator[Out]:
        request = call.request
        assert isinstance(request, ChatCompletionRequest)
        url, params = self._endpoint("chat/completions", call.upstream_model)
        tally = Tally(lambda: prompt_tokens(request.messages))
        if call.reply.whole:
            return self._whole(url, params, call, tally, False)
        return self._upstream.stream(url, self._body(call), _Relay(call, tally, False), params)

    def complete(self, call: Call) -> AsyncIterator[Out]:
        request = call.request
        assert isinstance(request, CompletionRequest)
        url, params = self._endpoint("completions", call.upstream_model)
        prompts = request.prompts()
        tally = Tally(
            lambda: sum(count_tokens(p) if isinstance(p, str) else len(p) for p in prompts)
        )
        if call.reply.whole:
            return self._whole(url, params, call, tally, True)
        return self._upstream.stream(url, self._body(call), _Relay(call, tally, True), params)

    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> Embeddings:
        url, params = self._endpoint("embeddings", upstream_model)
        # Always floats: the api encodes base64 itself if the caller asked for it.
        forwarded = msgspec.structs.replace(request, model=upstream_model, encoding_format=UNSET)
        raw = await self._upstream.post(url, lambda: _encoder.encode(forwarded), params)
        try:
            reply = _embedding_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise malformed(str(exc)) from None
        vectors = [item.embedding for item in sorted(reply.data, key=lambda item: item.index)]
        if reply.usage is None:
            tokens = _input_tokens(request)
            return Embeddings(vectors=vectors, usage=Usage(tokens, 0, tokens))
        return Embeddings(vectors=vectors, usage=reply.usage)

    async def probe(self) -> bool:
        if self._azure:
            return await self._upstream.probe(
                f"{self._base}/openai/models", {"api-version": self._api_version}
            )
        return await self._upstream.probe(f"{self._base}/models")

    async def aclose(self) -> None:
        await self._upstream.aclose()


def _input_tokens(request: EmbeddingRequest) -> int:
    """Fallback count: words of text inputs, ids of token inputs."""
    inputs = request.input
    if isinstance(inputs, str):
        return count_tokens(inputs)
    total = 0
    for item in inputs:
        if isinstance(item, str):
            total += count_tokens(item)
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1
    return total
