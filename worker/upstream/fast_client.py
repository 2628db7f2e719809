"""A minimal HTTP/1.1 client for every upstream: http and https, direct or through a proxy.

httpx's layers (request models, auth and redirect flows, cookie jar, h11) cost about a
millisecond of CPU per call: more than llmq's whole added-latency budget, and every hosted
API (OpenAI, Azure, Anthropic) is https. This client does only what the backends use: GET
and POST with a small body, keep-alive connections in a pool per origin, responses parsed
by httptools (llhttp, the parser uvicorn uses), bodies read as lines. `connect` opens the
connections (TLS with verification, proxies from the environment). It implements
`UpstreamClient` and raises llmq's own error types (`client`).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from types import TracebackType
from urllib.parse import urlencode

from llmq.worker.tracing import TRACEPARENT
from llmq.worker.upstream.client import (
    JSON_HEADERS,
    LineBatches,
    Params,
    ProtocolError,
    ReadError,
    StatusError,
    WriteError,
)
from llmq.worker.upstream.connect import (
    Connection,
    Origin,
    Proxy,
    Target,
    default_tls,
    open_stream,
    proxy_for,
    target_of,
)

try:
    import httptools
except ImportError:  # pragma: no cover - shipped with uvicorn[standard]
    httptools = None  # type: ignore[assignment]

READ_SIZE = 65536
MAX_IDLE = 64
MAX_HEAD = 64 * 1024

AVAILABLE = httptools is not None
"""False without httptools: then `choice` never picks this client."""


class FastResponse:
    """One response: status and headers at once, the body as it arrives."""

    def __init__(self, client: FastClient, conn: Connection, origin: Origin) -> None:
        self._client = client
        self._conn: Connection | None = conn
        self._origin = origin
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._head_done = False
        self._complete = False
        self._leftover = False  # bytes followed the complete response: connection spent
        self._bytes_seen = False
        self._keep_alive = False
        self._head_bytes = 0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.content = b""

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        """Past the end of this response the parser reads on as if another followed."""
        if self._complete:
            self._leftover = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete:  # leftover (`on_message_begin` noted it)
            return
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:  # leftover (`on_message_begin` noted it)
            return
        self._head_done = True
        self.status_code = self._parser.get_status_code()
        headers: dict[str, str] = {}
        for name, value in self._raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        # Only valid while parsing: llhttp resets it once the message is complete.
        self._keep_alive = bool(self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self._complete:  # leftover (`on_message_begin` noted it)
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._complete:  # leftover (`on_message_begin` noted it)
            return
        self._complete = True

    # --- reading ---------------------------------------------------------------------------

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    def status_error(self) -> StatusError:
        """This answer as llmq's `StatusError` (the body must have been read)."""
        return StatusError(self.status_code, self.headers, self.content)

    async def _fill(self) -> bool:
        """Read once from the socket into the parser; False at end of stream."""
        assert self._conn is not None
        try:
            data = await self._conn.receive(READ_SIZE)
        except OSError as exc:
            raise ReadError(str(exc) or type(exc).__name__) from None
        if not data:
            if self._head_done and not self._framed():
                self._complete = True  # body delimited by the connection's end
                return False
            if not self._bytes_seen:
                raise _Stale()
            raise ProtocolError("peer closed connection without sending complete message body")
        self._bytes_seen = True
        if not self._head_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD + READ_SIZE:
                raise ProtocolError("response head too large")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._complete:  # garbage after a complete response: leftover, no error
                self._leftover = True
                return True
            raise ProtocolError(f"malformed HTTP response: {exc}") from None
        return True

    def _framed(self) -> bool:
        return "content-length" in self.headers or "chunked" in self.headers.get(
            "transfer-encoding", ""
        )

    async def _read_head(self) -> None:
        while not self._head_done:
            await self._fill()

    async def aread(self) -> bytes:
        while not self._complete and await self._fill():
            pass
        self.content = b"".join(self._chunks)
        self._chunks.clear()
        await self.aclose()
        return self.content

    async def aiter_line_batches(self) -> LineBatches:
        """The body's complete lines without their line break (`\\n`, `\\r\\n` or `\\r`),
        all that one read from the socket brought at a time."""
        pending = b""
        while True:
            if self._chunks:
                data = pending + b"".join(self._chunks) if pending else b"".join(self._chunks)
                self._chunks.clear()
                if b"\r" in data:
                    held = data.endswith(b"\r") and not self._complete
                    if held:
                        data = data[:-1]
                    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                    if held:
                        data += b"\r"  # may be the first half of \r\n
                *lines, pending = data.split(b"\n")
                if lines:
                    yield [line.decode("utf-8", "replace") for line in lines]
                continue
            if self._complete or not await self._fill():
                if not self._chunks:
                    break
        if pending:
            yield [pending.rstrip(b"\r").decode("utf-8", "replace")]

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._complete and self._keep_alive and self._framed() and not self._leftover:
            self._client._release(self._origin, conn)
        else:
            conn.close()


class _Stale(Exception):
    """A reused keep-alive connection was closed by the server before it answered."""


class _Streaming:
    """`FastClient.stream`: the request is sent on entry, the response closed on exit."""

    def __init__(self, client: FastClient, url: str, body: bytes, params: Params) -> None:
        self._client = client
        self._request = (url, body, params)
        self._response: FastResponse | None = None

    async def __aenter__(self) -> LineBatches:
        url, body, params = self._request
        response = await self._client._send("POST", url, body, params, JSON_HEADERS)
        if response.is_error:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise response.status_error()
        self._response = response
        return response.aiter_line_batches()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._response is not None:
            await self._response.aclose()


class FastClient:
    """`UpstreamClient` for http and https origins: a keep-alive pool per origin.

    `tls` verifies https upstreams (default: `connect.default_tls()`); `proxies` False
    ignores the proxy variables of the environment."""

    def __init__(
        self,
        headers: Mapping[str, str],
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
        proxies: bool = True,
    ) -> None:
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        self._connect_timeout = connect_timeout
        self._tls = tls
        self._use_proxies = proxies
        self._idle: dict[Origin, list[Connection]] = {}
        self._targets: dict[str, Target] = {}
        self._proxies: dict[Origin, Proxy | None] = {}
        self._closed = False

    def __repr__(self) -> str:
        return "FastClient()"

    # --- UpstreamClient ----------------------------------------------------------------------

    def stream(self, url: str, body: bytes, params: Params = None) -> _Streaming:
        return _Streaming(self, url, body, params)

    async def post(self, url: str, body: bytes, params: Params = None) -> bytes:
        response = await self.request("POST", url, body, params, JSON_HEADERS)
        if response.is_error:
            raise response.status_error()
        return response.content

    async def status(self, url: str, params: Params = None) -> int:
        return (await self.request("GET", url, None, params)).status_code

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
    ) -> FastResponse:
        """One whole exchange: the response with its body read, whatever its status."""
        response = await self._send(method, url, body, params, headers)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # --- internals -----------------------------------------------------------------------------

    def _target(self, url: str) -> Target:
        """Where a URL's requests go and how they are addressed, cached per URL."""
        cached = self._targets.get(url)
        if cached is None:
            cached = target_of(url, self._proxy)
            if len(self._targets) < 256:
                self._targets[url] = cached
        return cached

    def _proxy(self, origin: Origin) -> Proxy | None:
        if not self._use_proxies:
            return None
        if origin not in self._proxies:
            self._proxies[origin] = proxy_for(origin[0], origin[1])
        return self._proxies[origin]

    def _head(
        self,
        method: str,
        target: str,
        where: Target,
        body: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {where.host_header}\r\n{where.extra}"]
        if headers:
            lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        trace = TRACEPARENT.get()
        if trace:
            lines.append(f"traceparent: {trace}\r\n")
        if body is not None:
            lines.append(f"content-length: {len(body)}\r\n")
        return "".join(lines).encode("latin-1") + self._fixed + b"\r\n"

    async def _send(
        self,
        method: str,
        url: str,
        content: bytes | None,
        params: Params,
        headers: Mapping[str, str] | None,
    ) -> FastResponse:
        where = self._target(url)
        target = where.target
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params)
        request = self._head(method, target, where, content, headers)
        if content:
            request += content
        origin = where.origin
        for _attempt in range(2):
            conn, reused = await self._acquire(origin)
            response = FastResponse(self, conn, origin)
            try:
                conn.send(request)
                if len(request) > READ_SIZE:
                    await conn.writer.drain()
                await response._read_head()
            except _Stale:
                conn.close()
                if reused:
                    continue  # the server closed it while idle; nothing was processed
                raise ProtocolError("server disconnected without sending a response") from None
            except OSError as exc:
                conn.close()
                if reused and not response._bytes_seen:
                    continue
                raise WriteError(str(exc) or type(exc).__name__) from None
            except BaseException:
                conn.close()
                raise
            return response
        raise ProtocolError("server disconnected without sending a response")

    async def _acquire(self, origin: Origin) -> tuple[Connection, bool]:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        tls = None
        if origin[0] == "https":
            tls = self._tls = self._tls or default_tls()
        opened = await open_stream(origin, self._proxy(origin), tls, self._connect_timeout)
        return Connection(*opened), False

    def _release(self, origin: Origin, conn: Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= MAX_IDLE or not conn.usable():
            conn.close()
        else:
            idle.append(conn)
