"""The contract between the worker's job runner and a backend.

A backend turns one `Call` (the client's request, typed and as the bytes it came in) into a
stream of `Out`s. Each `Out.chunk` is a complete OpenAI stream chunk as the client will see
it (`chat.completion.chunk` or `text_completion`, every choice with its index, llmq's id and
model): a pass-through backend relays the upstream's chunks with only id and model rewritten,
a translating backend builds them with `worker.chunks`. Nothing is lost between the two: the
runner sends the chunks as they are, or folds them into one body (`worker.responses.Fold`).
The last `Out` carries the usage of every choice and the first choice's finish reason; when
the runner asks for a whole reply (`ReplyTo.whole`), it may carry the whole body instead.
The runner owns frames, deadlines, cancellation and retries. Cancelling the task that
iterates a backend's stream must close the upstream request at once (an `async with` around
the HTTP stream does that).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Struct

from llmq.schemas.envelope import JobKind
from llmq.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Usage

_encoder = msgspec.json.Encoder()


class Out(Struct):
    """One step of a generation, ready for the client."""

    chunk: bytes = b""
    """A whole OpenAI stream chunk, encoded; empty when there is nothing to send."""
    tokens: bool = False
    """The chunk carries generated output (text, reasoning, a refusal or a tool call)."""
    usage: Usage | None = None
    """Set on the last Out: the usage of the whole generation, every choice counted."""
    finish_reason: str | None = None
    """Set on the last Out: the first choice's finish reason (for the done frame)."""
    body: bytes = b""
    """Set on the last Out only when `ReplyTo.whole`: the whole non-streamed body, built by
    the backend itself (then the Outs before it carry no chunks)."""


class ReplyTo(Struct, frozen=True):
    """How the client's chunks are named, and whether it gets a usage chunk."""

    id: str = "chatcmpl-llmq"
    model: str = ""
    created: int = 0
    include_usage: bool = False
    whole: bool = False
    """The client wants one body, not a stream: a backend may build it itself and hand it
    over in the last `Out.body` (the openai backend makes a non-streamed upstream call, the
    others skip encoding chunks); the runner folds the chunks of a backend that does not."""


class Call(Struct, frozen=True):
    """One chat or completion job as a backend gets it."""

    request: ChatCompletionRequest | CompletionRequest
    """The typed view (decoded once by the runner)."""
    upstream_model: str
    body: bytes
    """The client's JSON as it came (with the api's defaults): what a pass-through forwards."""
    reply: ReplyTo

    @classmethod
    def of(
        cls,
        request: ChatCompletionRequest | CompletionRequest,
        upstream_model: str,
        reply: ReplyTo | None = None,
        body: bytes | None = None,
    ) -> Call:
        """A call built from a typed request (tests, tools): the body is its encoding."""
        if reply is None:
            prefix = "cmpl" if isinstance(request, CompletionRequest) else "chatcmpl"
            reply = ReplyTo(f"{prefix}-llmq", request.model, 0, False)
        return cls(request, upstream_model, body or _encoder.encode(request), reply)

    def __repr__(self) -> str:
        # Never the body or the messages: a prompt must not reach a log.
        return f"Call(upstream_model={self.upstream_model!r}, reply={self.reply!r})"

    @property
    def choices(self) -> int:
        """`n`: how many choices the client asked for."""
        n = self.request.n
        return n if isinstance(n, int) and n > 0 else 1


class Embeddings(Struct):
    vectors: list[list[float]]
    usage: Usage


@dataclass(frozen=True)
class Timeouts:
    """Seconds; each bound applies to every upstream call of the backend."""

    connect: float = 5.0
    first_token: float = 60.0
    between_tokens: float = 30.0
    total: float = 600.0


@dataclass(frozen=True)
class OpenAIOptions:
    """openai backend; a deployment or an api-version means Azure OpenAI."""

    azure_deployment: str = ""
    api_version: str = ""
    include_usage: bool = True
    """Ask the upstream for usage (stream_options); off for servers that reject it."""


@dataclass(frozen=True)
class OllamaOptions:
    keep_alive: str = ""
    """Ollama's keep_alive: a duration (`5m`), or seconds (`-1` = forever); empty: unset."""
    num_ctx: int | None = None


@dataclass(frozen=True)
class AnthropicOptions:
    default_max_tokens: int = 4096
    """max_tokens sent when the request sets none (Anthropic requires one)."""


@dataclass(frozen=True)
class EchoOptions:
    delay: float = 0.0
    """Seconds per token."""


BackendOptions = OpenAIOptions | OllamaOptions | AnthropicOptions | EchoOptions
OptionsT = TypeVar("OptionsT", OpenAIOptions, OllamaOptions, AnthropicOptions, EchoOptions)


@dataclass(frozen=True)
class BackendConfig:
    """How a worker reaches its backend. Never built from a request body."""

    kind: str = "echo"
    url: str = ""
    api_key: str = field(default="", repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeouts: Timeouts = field(default_factory=Timeouts)
    http_client: Literal["auto", "httpx"] = "auto"
    """`httpx` forces httpx; `auto` lets plain-http upstreams use the lean client."""
    options: BackendOptions | None = None
    """The options of `kind`; None: that kind's defaults."""

    def options_of(self, kind: type[OptionsT]) -> OptionsT:
        """This backend's options, or the defaults when none (or another kind's) are set."""
        return self.options if isinstance(self.options, kind) else kind()

    def __repr__(self) -> str:
        # No key, no header values, no credentials or query string of the URL.
        return (
            f"BackendConfig(kind={self.kind!r}, url={redact_url(self.url)!r}, "
            f"api_key={'<set>' if self.api_key else '<none>'}, headers={sorted(self.headers)}, "
            f"timeouts={self.timeouts!r}, http_client={self.http_client!r}, "
            f"options={self.options!r})"
        )


def redact_url(url: str) -> str:
    """The URL without user:password@ and query string (Azure SAS tokens, keys in URLs)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class BackendError(Exception):
    """A failure the client should see with its meaning kept.

    `retryable` failures before the first token are retried on another worker; `status` is
    the HTTP status the client gets when they are not (or attempts run out).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        type: str = "upstream_error",
        code: str | None = None,
        param: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.retryable = retryable
        self.retry_after = retry_after


class Backend(Protocol):
    """What every backend module provides."""

    kinds: ClassVar[frozenset[JobKind]]
    """Job kinds supported: a subset of `JOB_KINDS`."""

    def chat(self, call: Call) -> AsyncIterator[Out]:
        """Stream a chat completion (`call.request` is a ChatCompletionRequest)."""
        ...

    def complete(self, call: Call) -> AsyncIterator[Out]:
        """Stream a legacy text completion (raise BackendError 400 if unsupported)."""
        ...

    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> Embeddings:
        """Embed the inputs (raise BackendError 400 if unsupported)."""
        ...

    async def probe(self) -> bool:
        """Cheap health check used by the circuit breaker while it is open."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def unsupported(kind: str, backend: str) -> BackendError:
    return BackendError(
        f"the {backend} backend does not support {kind} requests",
        status=400,
        type="invalid_request_error",
        code="unsupported_endpoint",
    )


def unsupported_parameter(param: str, backend: str, why: str = "") -> BackendError:
    """A request field this backend cannot honour: a 400 naming it, never a silent drop."""
    detail = f": {why}" if why else ""
    return BackendError(
        f"the {backend} backend does not support the parameter `{param}`{detail}",
        status=400,
        type="invalid_request_error",
        code="unsupported_parameter",
        param=param,
    )
