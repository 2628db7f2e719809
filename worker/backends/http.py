"""What the three HTTP backends share, written once so they fail the same way.

One pooled `httpx.AsyncClient` per backend, the timeouts of `BackendConfig.timeouts`
(first token, between tokens, total) enforced with asyncio deadlines around every read,
upstream error bodies mapped to `BackendError`, and a server-sent-events line decoder.
Protocol specifics live in small synchronous `StreamParser`s, one per backend module.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from typing import Any, NamedTuple, Protocol, cast

import httpx
import msgspec

from llmq.schemas.openai import Usage
from llmq.schemas.text import count_tokens
from llmq.worker.backends.base import BackendConfig, BackendError, Piece, Timeouts
from llmq.worker.backends.fasthttp import FastClient, fast_client
from llmq.worker.tracing import add_traceparent

JSON_HEADERS = {"content-type": "application/json"}
MAX_MESSAGE = 1000
"""Longest upstream error text passed on to the caller."""

DRAIN_SECONDS = 1.0
"""How long a finished stream's remaining body is read before the connection is dropped."""

json_decoder = msgspec.json.Decoder()
"""Untyped JSON, for error bodies and the odd free-form field."""


class StreamParser(Protocol):
    """Turns an upstream's response lines into pieces; knows when the stream is complete."""

    done: bool
    """Set once the terminal event was read; the rest of the body is not read."""

    def feed(self, line: str) -> list[Piece]:
        """One line of the body (without its line break)."""
        ...

    def eof(self) -> list[Piece]:
        """The body ended: the final piece, or raise `ended_early()` if it is incomplete."""
        ...


# --- usage ---------------------------------------------------------------------------------


class Tally:
    """Remembers the generated text so usage can be counted when the upstream gives none."""

    def __init__(self, prompt_tokens: Callable[[], int]) -> None:
        self._prompt_tokens = prompt_tokens
        self._parts: list[str] = []

    def add(self, text: str | None) -> None:
        if text:
            self._parts.append(text)

    def usage(self, prompt: int | None = None, completion: int | None = None) -> Usage:
        """Upstream counts where given, `count_tokens` for the rest."""
        if prompt is None:
            prompt = self._prompt_tokens()
        if completion is None:
            completion = count_tokens("".join(self._parts))
        return Usage(prompt, completion, prompt + completion)


# --- errors --------------------------------------------------------------------------------


class UpstreamError(NamedTuple):
    message: str | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value[:MAX_MESSAGE]
    return msgspec.json.encode(value).decode()[:MAX_MESSAGE]


def error_fields(payload: Any) -> UpstreamError:
    """The upstream's own message from any of the error shapes in use.

    OpenAI `{"error": {"message", "type", "code", "param"}}`, Anthropic `{"type": "error",
    "error": {"type", "message"}}`, Ollama and TGI `{"error": "..."}`, vLLM's older top-level
    `{"object": "error", "message", ...}`, FastAPI's `{"detail": ...}`.
    """
    if not isinstance(payload, dict):
        return UpstreamError(_text(payload))
    inner = payload.get("error")
    if isinstance(inner, str):
        return UpstreamError(_text(inner))
    if not isinstance(inner, dict):
        inner = payload
    code = inner.get("code")
    param = inner.get("param")
    kind = inner.get("type")
    return UpstreamError(
        _text(inner.get("message") or inner.get("detail")),
        kind if isinstance(kind, str) and kind != "error" else None,
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )


def parse_error_body(body: bytes) -> UpstreamError:
    try:
        return error_fields(json_decoder.decode(body))
    except msgspec.DecodeError:
        return UpstreamError(_text(body.decode("utf-8", "replace").strip()))


class Response(Protocol):
    """What error mapping reads of a response: httpx's, or FastClient's."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class StreamResponse(Response, Protocol):
    @property
    def is_error(self) -> bool: ...

    async def aread(self) -> bytes: ...

    def aiter_lines(self) -> AsyncIterator[str]: ...


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `Retry-After` (delta-seconds or HTTP-date), else `retry-after-ms`."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            return None
    return None


def error_from_response(response: Response) -> BackendError:
    """An upstream HTTP error, mapped to what the caller should see (body must be read)."""
    status = response.status_code
    upstream = parse_error_body(response.content)
    message = upstream.message or f"upstream returned HTTP {status}"
    if status in (401, 403):
        # The worker's credential is wrong, not the caller's; never echo the upstream text,
        # which may quote part of the key.
        return BackendError(
            f"the upstream rejected this worker's credentials (HTTP {status})",
            status=502,
            type="upstream_auth_error",
            code="upstream_auth_failed",
        )
    if status == 429:
        return BackendError(
            message,
            status=429,
            type="rate_limit_error",
            code="upstream_rate_limited",
            retryable=True,
            retry_after=retry_after(response.headers),
        )
    if status == 404:
        return BackendError(
            message,
            status=404,
            type="invalid_request_error",
            code=upstream.code or "model_not_found",
            param=upstream.param,
        )
    if status == 408:
        return BackendError(
            message, status=504, type="timeout", code="upstream_timeout", retryable=True
        )
    if 400 <= status < 500:
        return BackendError(
            message,
            status=413 if status == 413 else 400,
            type="invalid_request_error",
            code=upstream.code,
            param=upstream.param,
        )
    return BackendError(
        f"upstream error (HTTP {status}): {message}",
        status=502,
        type="upstream_error",
        code="upstream_unavailable",
        retryable=True,
        retry_after=retry_after(response.headers),
    )


def stream_error(payload: Any, *, retryable: bool = False) -> BackendError:
    """An error the upstream reported inside a stream that had already answered 200."""
    upstream = error_fields(payload)
    return BackendError(
        f"upstream error: {upstream.message or 'unknown error'}",
        status=502,
        type="upstream_error",
        code=upstream.type or upstream.code or "upstream_stream_error",
        retryable=retryable,
    )


def ended_early() -> BackendError:
    """The body ended before the protocol's last event: like a dropped connection."""
    return BackendError(
        "the upstream closed the stream before it was complete",
        status=502,
        type="upstream_error",
        code="upstream_disconnected",
        retryable=True,
    )


def malformed(reason: str) -> BackendError:
    return BackendError(
        f"the upstream sent a malformed response: {reason}"[:MAX_MESSAGE],
        status=502,
        type="upstream_error",
        code="upstream_malformed",
    )


# --- timeouts ------------------------------------------------------------------------------


class Clock:
    """The deadline of the next read: first token, then between tokens, never past total."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.end = now + timeouts.total
        self._next = now + timeouts.first_token
        self.started = False
        """A piece went to the caller: from now on nothing is retryable."""

    def deadline(self) -> float:
        return min(self._next, self.end)

    def tick(self) -> None:
        """A piece was handed over: the between-tokens bound starts again."""
        self._next = self._loop.time() + self.timeouts.between_tokens

    def expired(self) -> BackendError:
        t = self.timeouts
        if self._loop.time() >= self.end - 0.001:
            what = f"the call took longer than {t.total:g}s"
        elif not self.started:
            what = f"no first token within {t.first_token:g}s"
        else:
            what = f"no token for {t.between_tokens:g}s"
        return BackendError(
            f"upstream timed out: {what}", status=504, type="timeout", code="upstream_timeout"
        )


@contextmanager
def upstream_errors(clock: Clock) -> Iterator[None]:
    """Transport failures as BackendErrors; nothing is retryable once a piece went out."""
    try:
        yield
    except BackendError as error:
        if clock.started:
            error.retryable = False
        raise
    except TimeoutError:
        raise clock.expired() from None
    except httpx.TimeoutException as exc:
        # httpx only times out the connect (reads are bounded by the clock): nothing was sent.
        raise BackendError(
            f"upstream timed out: {type(exc).__name__}",
            status=504,
            type="timeout",
            code="upstream_timeout",
            retryable=not clock.started,
        ) from None
    except httpx.RequestError as exc:
        raise BackendError(
            f"upstream connection failed: {exc or type(exc).__name__}"[:MAX_MESSAGE],
            status=502,
            type="upstream_error",
            code="upstream_unavailable",
            retryable=not clock.started,
        ) from None
    except msgspec.DecodeError as exc:
        raise malformed(str(exc)) from None


# --- the client ----------------------------------------------------------------------------


class Upstream:
    """One backend's HTTP side: a pooled client and the three kinds of call backends make."""

    def __init__(self, config: BackendConfig, auth_headers: dict[str, str], base: str = "") -> None:
        self.timeouts = config.timeouts
        headers = {"user-agent": "llmq-worker", **auth_headers}
        headers.update((name.lower(), value) for name, value in config.headers.items())
        # Plain-http upstreams without a proxy (local model servers) get the lean client:
        # httpx costs about a millisecond per call. `http_client=httpx` forces httpx.
        fast = fast_client(
            base or config.url,
            headers,
            config.timeouts.connect,
            enabled=config.http_client != "httpx",
        )
        self.client: httpx.AsyncClient | FastClient = fast or httpx.AsyncClient(
            headers=headers,
            # Reads and writes are bounded by the Clock's asyncio deadlines; httpx bounds
            # only the connect so that its failure is known to be retry-safe.
            timeout=httpx.Timeout(None, connect=config.timeouts.connect),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            event_hooks={"request": [add_traceparent]},  # the job's traceparent, if any
        )

    def __repr__(self) -> str:
        return f"Upstream(timeouts={self.timeouts!r})"

    async def stream(
        self,
        url: str,
        body: Callable[[], bytes],
        parser: StreamParser,
        params: dict[str, str] | None = None,
    ) -> AsyncIterator[Piece]:
        """POST and yield pieces as the parser finds them.

        `body` is built lazily so that a request the backend cannot translate fails while
        iterating, like every other error. The response is closed on every exit, including
        cancellation of the consuming task, which ends the upstream generation.
        """
        clock = Clock(self.timeouts)
        with upstream_errors(clock):
            content = body()
            async with AsyncExitStack() as stack:
                async with asyncio.timeout_at(clock.deadline()):
                    response = cast(
                        StreamResponse,
                        await stack.enter_async_context(
                            self.client.stream(
                                "POST", url, content=content, params=params, headers=JSON_HEADERS
                            )
                        ),
                    )
                    if response.is_error:
                        await response.aread()
                        raise error_from_response(response)
                batches = _line_batches(response)
                stack.push_async_callback(batches.aclose)
                while not parser.done:
                    # One deadline per read from the socket, not per line: a read brings
                    # every line that has arrived.
                    async with asyncio.timeout_at(clock.deadline()):
                        batch = await anext(batches, None)
                    if batch is None:
                        pieces = parser.eof()
                        for piece in pieces:
                            clock.started = True
                            yield piece
                        break
                    for line in batch:
                        pieces = parser.feed(line)
                        if parser.done:
                            await _drain(batches, clock)
                        for piece in pieces:
                            clock.started = True
                            yield piece
                        if pieces:
                            clock.tick()
                        if parser.done:
                            break

    async def post(
        self, url: str, body: Callable[[], bytes], params: dict[str, str] | None = None
    ) -> bytes:
        """POST and return the whole JSON body (embeddings), within the total timeout."""
        clock = Clock(self.timeouts)
        with upstream_errors(clock):
            content = body()
            async with asyncio.timeout_at(clock.end):
                response = await self.client.post(
                    url, content=content, params=params, headers=JSON_HEADERS
                )
            if response.is_error:
                raise error_from_response(response)
            return response.content

    async def probe(self, url: str, params: dict[str, str] | None = None) -> bool:
        """True when the server answers at all below 500 (a 401 or 404 still proves it is up)."""
        try:
            async with asyncio.timeout(min(self.timeouts.first_token, self.timeouts.total)):
                response = await self.client.get(url, params=params)
        except (httpx.HTTPError, TimeoutError):
            return False
        return response.status_code < 500

    async def aclose(self) -> None:
        await self.client.aclose()


async def _line_batches(response: StreamResponse) -> AsyncGenerator[list[str], None]:
    """The body's lines, as many at a time as have arrived (FastClient), else one by one."""
    batched = getattr(response, "aiter_line_batches", None)
    if batched is not None:
        async for batch in batched():
            yield batch
        return
    async for line in response.aiter_lines():
        yield [line]


async def _drain(lines: AsyncGenerator[list[str], None], clock: Clock) -> None:
    """Read the rest of a complete answer (normally just the chunked-body terminator) so that
    the connection goes back to the pool instead of being closed."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout_at(min(clock.deadline(), loop.time() + DRAIN_SECONDS)):
            async for _ in lines:
                pass


# --- server-sent events --------------------------------------------------------------------


class SSEDecoder:
    """Lines to `(event, data)` pairs, one per blank line, as the SSE spec says.

    Also accepts llama.cpp's `error: {...}` field as an `error` event.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "error":
            self._event = "error"
            self._data.append(value)
        return None

    def flush(self) -> tuple[str, str] | None:
        """The pending event, if any (also called at end of body)."""
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        return (event, "\n".join(data)) if data else None


def base_url(config: BackendConfig, default: str) -> str:
    return (config.url or default).rstrip("/")


def set_if(target: dict[str, Any], key: str, value: Any) -> None:
    """Copy an optional request field: skips None and msgspec.UNSET."""
    if value is not None and value is not msgspec.UNSET:
        target[key] = value
