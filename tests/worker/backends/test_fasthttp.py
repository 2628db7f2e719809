"""The lean HTTP/1.1 client for plain-http upstreams (worker/backends/fasthttp.py): when it
is chosen, and the edges of HTTP it must get right. The backends' behaviour through it is
covered by test_openai.py (run with both clients), test_ollama.py and test_anthropic.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from llmq.worker.backends.base import BackendConfig
from llmq.worker.backends.fasthttp import FastClient, fast_client
from llmq.worker.backends.http import Upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A TCP server whose handler writes raw bytes; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def client() -> AsyncIterator[FastClient]:
    fast = FastClient({"user-agent": "t", "authorization": "Bearer k"}, connect_timeout=1.0)
    yield fast
    await fast.aclose()


def test_chosen_only_for_plain_http_without_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(fast_client("http://gpu1:8000/v1", {}, 1.0), FastClient)
    assert fast_client("https://api.openai.com/v1", {}, 1.0) is None
    assert fast_client("http://user:pw@gpu1:8000/v1", {}, 1.0) is None
    assert fast_client("http://gpu1:8000/v1", {}, 1.0, enabled=False) is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert fast_client("http://gpu1:8000/v1", {}, 1.0) is None
    monkeypatch.setenv("NO_PROXY", "gpu1")
    assert isinstance(fast_client("http://gpu1:8000/v1", {}, 1.0), FastClient)


async def test_upstream_picks_the_client_by_base_url_and_option() -> None:
    chosen = [
        type(Upstream(BackendConfig(kind="openai", http_client=client), {}, base).client)
        for base, client in (
            ("http://127.0.0.1:1/v1", "auto"),
            ("https://api.openai.com/v1", "auto"),
            ("http://127.0.0.1:1/v1", "httpx"),
        )
    ]
    assert chosen == [FastClient, httpx.AsyncClient, httpx.AsyncClient]


async def test_request_head_headers_and_json_body(client: FastClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)

    async with RawServer(handler) as server:
        port = server.port
        response = await client.post(
            f"{server.url}/v1/embeddings",
            content=b'{"a":1}',
            params={"api-version": "2024-10-21"},
            headers={"content-type": "application/json"},
        )
    assert (response.status_code, response.content) == (200, b"ok")
    assert response.headers["x-a"] == "1, 2"
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/embeddings?api-version=2024-10-21 HTTP/1.1"
    assert {f"host: 127.0.0.1:{port}", "user-agent: t"} <= set(lines)
    assert {"authorization: Bearer k", "content-length: 7"} <= set(lines)
    assert "content-type: application/json" in lines and body == b'{"a":1}'


async def test_a_stale_keep_alive_connection_is_replaced_once(client: FastClient) -> None:
    """The server closes an idle connection just as the next request goes out: the request
    is sent again on a new connection, invisibly to the caller."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        await writer.drain()
        if n == 1:
            await server.read_request(reader)  # the next request arrives... and is dropped
            return
        await reader.read(1)

    async with RawServer(handler) as server:
        first = await client.get(f"{server.url}/a")
        second = await client.get(f"{server.url}/a")
    assert first.content == second.content == b"one"
    assert server.connections == 2 and len(server.requests) == 3


async def test_body_until_close_and_split_line_endings(client: FastClient) -> None:
    """No Content-Length, no chunking: the body ends with the connection; \\r\\n, \\n and \\r
    end lines even when split across reads."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        for part in (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: a\r",
                     b"\ndata: b\n\ndata: c\r", b"\rdata: d"):  # fmt: skip
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.02)

    async with RawServer(handler) as server:
        async with client.stream("POST", f"{server.url}/s", content=b"{}") as response:
            lines = [line async for line in response.aiter_lines()]
    assert lines == ["data: a", "data: b", "", "data: c", "", "data: d"]
    assert client._idle == {} or all(not conns for conns in client._idle.values())


async def test_body_cut_short_and_garbage_are_protocol_errors(client: FastClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        else:
            writer.write(b"SPDY/9 banana\r\n\r\n")
        await writer.drain()

    async with RawServer(handler) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await client.get(f"{server.url}/x")
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await client.get(f"{server.url}/x")


async def test_refused_and_unanswered_connections(client: FastClient) -> None:
    with socket_bound() as port:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/x")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)  # then close without a word

    async with RawServer(handler) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await client.get(f"{server.url}/x")


async def test_leaving_a_stream_early_closes_the_connection(client: FastClient) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n")
        await writer.drain()
        await reader.read(1)
        closed.set()

    async with RawServer(handler) as server:
        async with client.stream("POST", f"{server.url}/s", content=b"{}") as response:
            async for _ in response.aiter_lines():
                break
        await asyncio.wait_for(closed.wait(), 1.0)
        assert not any(client._idle.values())


@contextlib.contextmanager
def socket_bound():
    """A port bound but not listening: connecting to it is refused."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
