"""The seam between the backends and an HTTP library: what a call needs, how it fails.

Backends and `calls.Upstream` see only `UpstreamClient` and these error types; each client
module translates its own library's exceptions into them, so swapping the library touches
one module (`choice`) and no backend.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

JSON_HEADERS = {"content-type": "application/json"}
"""Sent with every POST: all upstream request bodies are JSON."""

Params = Mapping[str, str] | None
"""Query parameters of a call (Azure's `api-version`)."""


class TransportError(Exception):
    """The call failed on the way: no usable HTTP answer. The message is the library's."""


class ConnectError(TransportError):
    """No connection to the upstream: refused, unresolvable, reset during the handshake."""


class ProtocolError(TransportError):
    """The upstream broke HTTP: closed early, sent a malformed or oversized response."""


class ReadError(TransportError):
    """Reading the response failed on the socket."""


class WriteError(TransportError):
    """Sending the request failed on the socket."""


class Timeout(TransportError):
    """A library-side timeout. Only connecting is bounded by the client; reads are bounded
    by the caller's clock (`timeouts.Clock`), so one of these means nothing was sent."""


class ConnectTimeout(Timeout):
    pass


class ReadTimeout(Timeout):
    pass


class WriteTimeout(Timeout):
    pass


class PoolTimeout(Timeout):
    pass


class StatusError(Exception):
    """The upstream answered with a status of 400 or more; the body was read in full."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"upstream returned HTTP {status}")
        self.status = status
        self.headers = headers
        """Lower-case names; repeated headers joined with ", "."""
        self.body = body


LineBatches = AsyncGenerator[list[str], None]
"""A response body as lines without their line breaks, as many at a time as have arrived."""


class UpstreamClient(Protocol):
    """One pooled HTTP client with the caller's fixed headers (auth, user-agent) set.

    Every method raises `TransportError` subclasses for failures on the way, and the POSTs
    raise `StatusError` for an answer of 400 or more.
    """

    async def post(self, url: str, body: bytes, params: Params = None) -> bytes:
        """POST a JSON body and return the whole response body."""
        ...

    def stream(
        self, url: str, body: bytes, params: Params = None
    ) -> AbstractAsyncContextManager[LineBatches]:
        """POST a JSON body; entered once the response head arrived, the body as lines.
        Leaving the context closes the response (and ends the upstream generation)."""
        ...

    async def status(self, url: str, params: Params = None) -> int:
        """GET and return only the status code (health probes)."""
        ...

    @property
    def is_closed(self) -> bool:
        """`aclose` was called."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...
