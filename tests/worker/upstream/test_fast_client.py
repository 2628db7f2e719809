"""The lean HTTP/1.1 client (worker/upstream/fast_client.py): the
edges of HTTP it must get right, failing with llmq's error types. When it is chosen is in
test_choice.py; the backends' behaviour through it is covered by tests/worker/backends
(test_openai.py runs with both clients), test_ollama.py and test_anthropic.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from llmq.worker.upstream.client import ConnectError, ProtocolError
from llmq.worker.upstream.fast_client import FastClient
from tests.worker.upstream.raw_server import RawServer, socket_bound


@pytest.fixture
async def client() -> AsyncIterator[FastClient]:
    fast = FastClient({"user-agent": "t", "authorization": "Bearer k"}, connect_timeout=1.0)
    yield fast
    await fast.aclose()


async def test_request_head_headers_and_json_body(client: FastClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)

    async with RawServer(handler) as server:
        port = server.port
        response = await client.request(
            "POST",
            f"{server.url}/v1/embeddings",
            b'{"a":1}',
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
        first = await client.request("GET", f"{server.url}/a")
        second = await client.request("GET", f"{server.url}/a")
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
        async with client.stream(f"{server.url}/s", b"{}") as batches:
            lines = [line async for batch in batches for line in batch]
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
        with pytest.raises(ProtocolError, match="complete message body"):
            await client.request("GET", f"{server.url}/x")
        with pytest.raises(ProtocolError, match="malformed"):
            await client.request("GET", f"{server.url}/x")


async def test_refused_and_unanswered_connections(client: FastClient) -> None:
    with socket_bound() as port:
        with pytest.raises(ConnectError):
            await client.request("GET", f"http://127.0.0.1:{port}/x")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)  # then close without a word

    async with RawServer(handler) as server:
        with pytest.raises(ProtocolError, match="without sending a response"):
            await client.request("GET", f"{server.url}/x")


async def test_leaving_a_stream_early_closes_the_connection(client: FastClient) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n")
        await writer.drain()
        await reader.read(1)
        closed.set()

    async with RawServer(handler) as server:
        async with client.stream(f"{server.url}/s", b"{}") as batches:
            async for _ in batches:
                break
        await asyncio.wait_for(closed.wait(), 1.0)
        assert not any(client._idle.values())


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
@pytest.mark.parametrize(
    "extra",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",  # a whole second response
        b"garbage after the end",
    ],
    ids=["response", "garbage"],
)
async def test_bytes_after_a_complete_response_close_the_connection(
    client: FastClient, response: bytes, extra: bytes
) -> None:
    """Issue 12 finding 11: whatever follows a complete response in the same read is not
    part of its body, and the connection it came on is never handed to the next request."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await server.read_request(reader)
            writer.write(response + extra if n == 1 else response)
            await writer.drain()

    async with RawServer(handler) as server:
        first = await client.request("GET", f"{server.url}/a")
        second = await client.request("GET", f"{server.url}/a")
        await client.aclose()
    assert first.content == second.content == b"hello"
    assert server.connections == 2  # the tainted connection was closed, not pooled


async def test_bytes_arriving_while_idle_close_the_connection(client: FastClient) -> None:
    """Bytes the server sends after a complete response, once it sat in the pool, would be
    read as the next request's answer: that connection is closed instead."""
    sent = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()
            if n == 1:
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
                await writer.drain()
                sent.set()

    async with RawServer(handler) as server:
        first = await client.request("GET", f"{server.url}/a")
        await asyncio.wait_for(sent.wait(), 5)
        await asyncio.sleep(0.05)
        second = await client.request("GET", f"{server.url}/a")
        await client.aclose()
    assert first.content == second.content == b"hello"
    assert server.connections == 2


async def test_a_stream_followed_by_extra_bytes_ends_at_its_own_end(client: FastClient) -> None:
    body = b"data: a\n\ndata: b\n\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await server.read_request(reader)
            writer.write(head + body + (b"data: forged\n\n" if n == 1 else b""))
            await writer.drain()

    async with RawServer(handler) as server:
        async with client.stream(f"{server.url}/s", b"{}") as batches:
            lines = [line async for batch in batches for line in batch]
        second = await client.request("GET", f"{server.url}/a")
        await client.aclose()
    assert lines == ["data: a", "", "data: b", ""]
    assert second.content == body and server.connections == 2
