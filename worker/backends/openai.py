"""Any OpenAI-compatible server: OpenAI, Azure OpenAI, vLLM, llama.cpp, LM Studio, TGI.

The caller's request is forwarded as it came (tools, response_format, penalties, ...) with
only the model replaced and streaming with usage switched on; the SSE reply is read back
into pieces. `url` is the base including `/v1`. Azure is selected by the `azure_deployment`
or `api_version` option: `{url}/openai/deployments/{deployment}/...?api-version=...` with
the `api-key` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec
from msgspec import UNSET, Struct

from llmq.schemas.envelope import JOB_KINDS, JobKind
from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    StreamOptions,
    Usage,
)
from llmq.schemas.text import count_tokens, prompt_tokens
from llmq.worker.backends.base import BackendConfig, Embeddings, OpenAIOptions, Piece
from llmq.worker.upstream.calls import Upstream, base_url
from llmq.worker.upstream.error_mapping import ended_early, malformed, stream_error
from llmq.worker.upstream.sse import SSEDecoder
from llmq.worker.upstream.usage import Tally

AZURE_API_VERSION = "2024-10-21"


class _Delta(Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(Struct):
    index: int = 0
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Chunk(Struct):
    choices: list[_Choice] | None = None
    usage: Usage | None = None
    error: Any = None


class _Vector(Struct):
    embedding: list[float]
    index: int = 0


class _EmbeddingList(Struct):
    data: list[_Vector]
    usage: Usage | None = None


_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_chunk_decoder = msgspec.json.Decoder(_Chunk)
_embedding_decoder = msgspec.json.Decoder(_EmbeddingList)


class _SSEStream:
    """`data: {chunk}` events until `data: [DONE]`; text from delta.content or choices[].text."""

    def __init__(self, tally: Tally, completion: bool) -> None:
        self.done = False
        self._sse = SSEDecoder()
        self._tally = tally
        self._completion = completion
        self._finish: str | None = None
        self._usage: Usage | None = None

    def feed(self, line: str) -> list[Piece]:
        event = self._sse.feed(line)
        return self._event(*event) if event else []

    def eof(self) -> list[Piece]:
        event = self._sse.flush()
        pieces = self._event(*event) if event else []
        if self.done:
            return pieces
        if self._finish is None:
            raise ended_early()
        return [*pieces, self._final()]  # a server that omits [DONE]

    def _event(self, name: str, data: str) -> list[Piece]:
        if data.strip() == "[DONE]":
            self.done = True
            return [self._final()]
        if name == "error":
            raise stream_error(_json_decoder.decode(data))
        chunk = _chunk_decoder.decode(data)
        if chunk.error is not None:
            raise stream_error({"error": chunk.error})
        if chunk.usage is not None:
            self._usage = chunk.usage
        pieces = []
        for choice in chunk.choices or ():
            if choice.index != 0:  # n > 1 is not streamed back; the first choice is the answer
                continue
            delta = choice.delta
            text = choice.text if self._completion else delta.content if delta else None
            tools = delta.tool_calls if delta else None
            if text or tools:
                self._tally.add(text)
                for call in tools or ():
                    function = call.get("function")
                    if isinstance(function, dict):
                        self._tally.add(function.get("arguments"))
                pieces.append(Piece(content=text or None, tool_calls=tools or None))
            if choice.finish_reason:
                self._finish = choice.finish_reason
        return pieces

    def _final(self) -> Piece:
        usage = self._usage
        if usage is None or (usage.prompt_tokens == 0 and usage.completion_tokens == 0):
            usage = self._tally.usage()
        elif usage.total_tokens == 0:
            usage = self._tally.usage(usage.prompt_tokens, usage.completion_tokens)
        return Piece(finish_reason=self._finish or "stop", usage=usage)


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

    def _stream_options(self) -> StreamOptions | Any:
        return StreamOptions(include_usage=True) if self._include_usage else UNSET

    def _streaming_body(
        self, request: ChatCompletionRequest | CompletionRequest, upstream_model: str
    ) -> Callable[[], bytes]:
        """The request as the upstream gets it: its own model name, streamed, with usage."""

        def body() -> bytes:
            return _encoder.encode(
                msgspec.structs.replace(
                    request,
                    model=upstream_model,
                    stream=True,
                    stream_options=self._stream_options(),
                )
            )

        return body

    def chat(self, request: ChatCompletionRequest, upstream_model: str) -> AsyncIterator[Piece]:
        url, params = self._endpoint("chat/completions", upstream_model)
        body = self._streaming_body(request, upstream_model)
        tally = Tally(lambda: prompt_tokens(request.messages))
        return self._upstream.stream(url, body, _SSEStream(tally, completion=False), params)

    def complete(self, request: CompletionRequest, upstream_model: str) -> AsyncIterator[Piece]:
        url, params = self._endpoint("completions", upstream_model)
        body = self._streaming_body(request, upstream_model)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        tally = Tally(lambda: sum(count_tokens(p) for p in prompts))
        return self._upstream.stream(url, body, _SSEStream(tally, completion=True), params)

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
