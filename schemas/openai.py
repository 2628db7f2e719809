"""OpenAI request and response types, as msgspec structs.

The request structs declare what llmq reads (admission, translating backends); they are never
re-encoded to forward a request: `patch_body` changes named top-level fields of the client's
JSON and leaves every other byte as it came, so fields llmq does not declare pass through.
Response fields the spec types as strings are UNSET (omitted) when absent, never null.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
Content = str | list[dict[str, Any]] | None


class Message(Struct, omit_defaults=True):
    role: Role
    content: Content = None
    name: str | UnsetType = UNSET
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    function_call: dict[str, Any] | UnsetType = UNSET


class StreamOptions(Struct, omit_defaults=True):
    include_usage: bool = False


class ChatCompletionRequest(Struct, omit_defaults=True):
    model: str
    messages: list[Message]
    stream: bool = False
    stream_options: StreamOptions | UnsetType | None = UNSET
    max_tokens: int | UnsetType | None = UNSET
    max_completion_tokens: int | UnsetType | None = UNSET
    temperature: float | UnsetType | None = UNSET
    top_p: float | UnsetType | None = UNSET
    n: int | UnsetType | None = UNSET
    stop: str | list[str] | UnsetType | None = UNSET
    seed: int | UnsetType | None = UNSET
    presence_penalty: float | UnsetType | None = UNSET
    frequency_penalty: float | UnsetType | None = UNSET
    logit_bias: dict[str, float] | UnsetType | None = UNSET
    logprobs: bool | UnsetType | None = UNSET
    top_logprobs: int | UnsetType | None = UNSET
    user: str | UnsetType = UNSET
    tools: list[dict[str, Any]] | UnsetType | None = UNSET
    tool_choice: str | dict[str, Any] | UnsetType | None = UNSET
    parallel_tool_calls: bool | UnsetType | None = UNSET
    response_format: dict[str, Any] | UnsetType | None = UNSET
    metadata: dict[str, str] | UnsetType | None = UNSET
    reasoning_effort: str | UnsetType | None = UNSET

    def token_limit(self) -> int | None:
        """The caller's output limit, whichever of the two spellings it used."""
        for value in (self.max_completion_tokens, self.max_tokens):
            if isinstance(value, int):
                return value
        return None

    def wants_usage_chunk(self) -> bool:
        return isinstance(self.stream_options, StreamOptions) and self.stream_options.include_usage


def _token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


class CompletionRequest(Struct, omit_defaults=True):
    """Legacy `/v1/completions` prompt form."""

    model: str
    prompt: str | list[Any]
    """Text, a list of texts, token ids (a list of ints) or a list of such lists."""
    stream: bool = False
    stream_options: StreamOptions | UnsetType | None = UNSET
    max_tokens: int | UnsetType | None = UNSET
    temperature: float | UnsetType | None = UNSET
    top_p: float | UnsetType | None = UNSET
    n: int | UnsetType | None = UNSET
    best_of: int | UnsetType | None = UNSET
    """Completions generated server-side, the best `n` returned: each one is reserved."""
    stop: str | list[str] | UnsetType | None = UNSET
    seed: int | UnsetType | None = UNSET
    presence_penalty: float | UnsetType | None = UNSET
    frequency_penalty: float | UnsetType | None = UNSET
    echo: bool | UnsetType | None = UNSET
    logprobs: int | UnsetType | None = UNSET
    suffix: str | UnsetType | None = UNSET
    user: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        prompt = self.prompt
        if isinstance(prompt, list) and not (
            all(isinstance(p, str) for p in prompt)
            or all(_token_ids(p) for p in prompt)
            or _token_ids(prompt)
        ):
            raise ValueError(
                "`prompt` must be a string, a list of strings, a list of token ids or a list "
                "of such lists"
            )

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(t, int) for t in prompt):
            return [prompt]
        return list(prompt)


class EmbeddingRequest(Struct, omit_defaults=True):
    model: str
    input: str | list[Any]
    """Text, a list of texts, or token ids (a list of ints, or a list of such lists)."""
    encoding_format: Literal["float", "base64"] | UnsetType = UNSET
    dimensions: int | UnsetType = UNSET
    user: str | UnsetType = UNSET


# --- responses ---------------------------------------------------------------------------


class Usage(Struct):
    """Token counts of a whole generation (every choice); the details as the upstream sent
    them (`cached_tokens`, `reasoning_tokens`, ...), omitted when it sent none."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | UnsetType = UNSET
    completion_tokens_details: dict[str, Any] | UnsetType = UNSET

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        value = details.get("cached_tokens") if isinstance(details, dict) else None
        return value if isinstance(value, int) else 0


class ResponseMessage(Struct):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET
    reasoning_content: str | UnsetType = UNSET


class Choice(Struct):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: Any = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    object: str = "chat.completion"
    system_fingerprint: str | UnsetType = UNSET


class Delta(Struct, omit_defaults=True):
    role: str | UnsetType = UNSET
    content: str | UnsetType | None = UNSET
    reasoning_content: str | UnsetType = UNSET
    refusal: str | UnsetType = UNSET
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET


class ChunkChoice(Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: str = "chat.completion.chunk"
    system_fingerprint: str | UnsetType = UNSET
    usage: Usage | UnsetType = UNSET


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


class ErrorBody(Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Struct):
    error: ErrorBody


chat_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
completion_request_decoder = msgspec.json.Decoder(CompletionRequest)
embedding_request_decoder = msgspec.json.Decoder(EmbeddingRequest)


class TextChoice(Struct):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: Any = None


class TextCompletion(Struct):
    """Legacy `/v1/completions` response and stream chunk (same object name for both)."""

    id: str
    created: int
    model: str
    choices: list[TextChoice]
    object: str = "text_completion"
    usage: Usage | UnsetType = UNSET


class EmbeddingData(Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingUsage(Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct):
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
    object: str = "list"


# --- the client's JSON, patched rather than re-encoded ----------------------------------

RawFields = dict[str, msgspec.Raw]
raw_fields_decoder: msgspec.json.Decoder[RawFields] = msgspec.json.Decoder(RawFields)
"""A JSON object's top-level fields, each value kept as its exact bytes."""
_raw_encoder = msgspec.json.Encoder()


def patch_body(body: bytes, changes: dict[str, Any]) -> bytes:
    """`body` with the named top-level fields set (UNSET removes one); every other field
    keeps its exact bytes and its place, so fields llmq does not know reach the upstream."""
    fields = raw_fields_decoder.decode(body)
    for key, value in changes.items():
        if value is UNSET:
            fields.pop(key, None)
        else:
            fields[key] = msgspec.Raw(_raw_encoder.encode(value))
    return _raw_encoder.encode(fields)
