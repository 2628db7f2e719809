"""The contract between the worker's job runner and a backend.

A backend turns one OpenAI-shaped request into a stream of `Piece`s (text deltas, tool-call
deltas, a finish reason, usage). The runner owns everything else: frames, chunk encoding,
deadlines, cancellation, retries. Cancelling the task that iterates a backend's stream must
close the upstream request at once (an `async with` around the HTTP stream does that).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from msgspec import Struct

from llmq.schemas.envelope import JobKind
from llmq.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Usage


class Piece(Struct, omit_defaults=True):
    """One increment of a generation."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


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

    def chat(self, request: ChatCompletionRequest, upstream_model: str) -> AsyncIterator[Piece]:
        """Stream a chat completion."""
        ...

    def complete(self, request: CompletionRequest, upstream_model: str) -> AsyncIterator[Piece]:
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
