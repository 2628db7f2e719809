"""`UpstreamClient` on httpx: the explicit fallback (`backend_http_client = "httpx"`) and
what `choice` uses for URLs the lean client does not serve (see `choice`).

httpx's exceptions are translated into `client`'s types here and nowhere else.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import httpx

from llmq.worker.tracing import add_traceparent
from llmq.worker.upstream.client import (
    JSON_HEADERS,
    ConnectError,
    ConnectTimeout,
    LineBatches,
    Params,
    PoolTimeout,
    ProtocolError,
    ReadError,
    ReadTimeout,
    StatusError,
    Timeout,
    TransportError,
    WriteError,
    WriteTimeout,
)

_TRANSLATED: tuple[tuple[type[httpx.RequestError], type[TransportError]], ...] = (
    (httpx.ConnectTimeout, ConnectTimeout),
    (httpx.ReadTimeout, ReadTimeout),
    (httpx.WriteTimeout, WriteTimeout),
    (httpx.PoolTimeout, PoolTimeout),
    (httpx.TimeoutException, Timeout),
    (httpx.ConnectError, ConnectError),
    (httpx.ProtocolError, ProtocolError),
    (httpx.ReadError, ReadError),
    (httpx.WriteError, WriteError),
)


@contextmanager
def translated() -> Iterator[None]:
    """httpx's request errors as llmq's `TransportError`s, message kept."""
    try:
        yield
    except httpx.RequestError as exc:
        kind = next((ours for theirs, ours in _TRANSLATED if isinstance(exc, theirs)), None)
        raise (kind or TransportError)(str(exc)) from exc


class HttpxClient:
    """A pooled `httpx.AsyncClient`; the job's traceparent goes on every request."""

    def __init__(
        self, headers: Mapping[str, str], connect_timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.client = httpx.AsyncClient(
            headers=dict(headers),
            verify=tls or True,  # True: the system CAs, or SSL_CERT_FILE / SSL_CERT_DIR
            # Reads and writes are bounded by the caller's Clock deadlines; httpx bounds
            # only the connect so that its failure is known to be retry-safe.
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            event_hooks={"request": [add_traceparent]},  # the job's traceparent, if any
        )

    def __repr__(self) -> str:
        return "HttpxClient()"

    async def post(self, url: str, body: bytes, params: Params = None) -> bytes:
        with translated():
            response = await self.client.post(
                url, content=body, params=params, headers=JSON_HEADERS
            )
        if response.is_error:
            raise StatusError(response.status_code, response.headers, response.content)
        return response.content

    @asynccontextmanager
    async def stream(
        self, url: str, body: bytes, params: Params = None
    ) -> AsyncIterator[LineBatches]:
        with translated():
            async with self.client.stream(
                "POST", url, content=body, params=params, headers=JSON_HEADERS
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise StatusError(response.status_code, response.headers, response.content)
                yield _line_batches(response)

    async def status(self, url: str, params: Params = None) -> int:
        with translated():
            response = await self.client.get(url, params=params)
        return response.status_code

    @property
    def is_closed(self) -> bool:
        return self.client.is_closed

    async def aclose(self) -> None:
        await self.client.aclose()


async def _line_batches(response: httpx.Response) -> LineBatches:
    """httpx yields lines one by one."""
    with translated():
        async for line in response.aiter_lines():
            yield [line]
