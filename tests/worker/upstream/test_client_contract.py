"""The seam (worker/upstream/client.py): both clients keep the same contract and fail with
llmq's own error types, so a backend cannot tell which library served it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from llmq.worker.upstream.client import (
    ConnectError,
    ProtocolError,
    StatusError,
    TransportError,
    UpstreamClient,
)
from llmq.worker.upstream.error_mapping import transport_error
from llmq.worker.upstream.fast_client import FastClient
from llmq.worker.upstream.httpx_client import HttpxClient
from tests.worker.upstream.pki import Pki
from tests.worker.upstream.raw_server import Handler, RawServer, socket_bound

Serve = Callable[[Handler], RawServer]


@pytest.fixture(params=["fast-http", "fast-https", "httpx-http", "httpx-https"])
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(variant: str, pki: Pki) -> AsyncIterator[UpstreamClient]:
    """Each client, trusting the test CA (so the https variants verify the server)."""
    tls = pki.client_context()
    made: UpstreamClient = (
        FastClient({"user-agent": "t"}, 1.0, tls=tls)
        if variant.startswith("fast")
        else HttpxClient({"user-agent": "t"}, 1.0, tls=tls)
    )
    yield made
    await made.aclose()
    assert made.is_closed


@pytest.fixture
def serve(variant: str, pki: Pki) -> Serve:
    """A raw server speaking http or https (certificate from the test CA) as the variant."""
    tls = pki.server_context() if variant.endswith("https") else None
    return lambda handler: RawServer(handler, tls=tls)


async def test_post_returns_the_body_and_sends_json(client: UpstreamClient, serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)

    async with serve(handler) as server:
        assert await client.post(f"{server.url}/e", b"{}", {"v": "1"}) == b"ok"
    head = server.requests[0].decode().lower()
    assert head.startswith("post /e?v=1 http/1.1") and "content-type: application/json" in head


async def test_an_error_answer_is_a_status_error_with_headers_and_body(
    client: UpstreamClient, serve: Serve
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:  # both requests may come on one kept-alive connection
            await server.read_request(reader)
            writer.write(
                b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nslow"
            )
            await writer.drain()

    async with serve(handler) as server:
        with pytest.raises(StatusError) as posted:
            await client.post(f"{server.url}/e", b"{}")
        with pytest.raises(StatusError) as streamed:
            async with client.stream(f"{server.url}/s", b"{}"):
                pass
    for error in (posted.value, streamed.value):
        assert (error.status, error.headers["retry-after"], error.body) == (429, "7", b"slow")


async def test_stream_yields_the_body_as_lines(client: UpstreamClient, serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\ndata: a\n\ndata: b\n")
        await writer.drain()
        await reader.read(1)

    async with serve(handler) as server:
        async with client.stream(f"{server.url}/s", b"{}") as batches:
            lines = [line async for batch in batches for line in batch]
    assert lines == ["data: a", "", "data: b"]


async def test_failures_on_the_way_are_llmq_errors(
    client: UpstreamClient, serve: Serve, variant: str
) -> None:
    scheme = variant.split("-")[1]
    with socket_bound() as port:
        with pytest.raises(ConnectError) as refused:
            await client.status(f"{scheme}://127.0.0.1:{port}/x")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        await writer.drain()

    async with serve(handler) as server:
        with pytest.raises(ProtocolError):
            await client.post(f"{server.url}/x", b"{}")
    mapped = transport_error(refused.value, retryable=True)
    assert (mapped.status, mapped.code, mapped.retryable) == (502, "upstream_unavailable", True)


def test_a_timeout_keeps_its_kind_in_the_message() -> None:
    from llmq.worker.upstream.client import ConnectTimeout

    mapped = transport_error(ConnectTimeout("no connection"), retryable=False)
    assert (mapped.status, mapped.code, mapped.message) == (
        504,
        "upstream_timeout",
        "upstream timed out: ConnectTimeout",
    )
    assert isinstance(ConnectTimeout(), TransportError)
