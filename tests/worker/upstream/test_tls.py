"""The lean client over TLS and through proxies (worker/upstream/connect.py), against a
local https server whose certificate a test CA signed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from llmq.worker.upstream.client import ConnectError, UpstreamClient
from llmq.worker.upstream.error_mapping import transport_error
from llmq.worker.upstream.fast_client import FastClient
from llmq.worker.upstream.httpx_client import HttpxClient
from tests.worker.upstream.pki import Pki
from tests.worker.upstream.raw_server import RawServer

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


async def _ok(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
) -> None:
    while True:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


async def test_https_verifies_the_server_and_speaks_http_1_1(pki: Pki) -> None:
    alpn: list[str | None] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        alpn.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        await _ok(reader, writer, server)

    client = FastClient({}, 2.0, tls=pki.client_context())
    async with RawServer(handler, tls=pki.server_context()) as server:
        assert await client.post(f"{server.url}/a", b"{}") == b"ok"
        assert await client.post(f"{server.url}/a", b"{}") == b"ok"
    await client.aclose()
    assert alpn == ["http/1.1"] and server.connections == 1  # kept alive over TLS


@pytest.mark.parametrize("kind", ["fast", "httpx"])
async def test_a_certificate_from_another_ca_is_a_clear_connect_error(
    pki: Pki, other_pki: Pki, kind: str
) -> None:
    tls = other_pki.client_context()
    client: UpstreamClient = (
        FastClient({}, 2.0, tls=tls) if kind == "fast" else HttpxClient({}, 2.0, tls=tls)
    )
    async with RawServer(lambda r, w, n: _ok(r, w, server), tls=pki.server_context()) as server:
        with pytest.raises(ConnectError) as refused:
            await client.post(f"{server.url}/a", b"{}")
    await client.aclose()
    assert "certificate verify failed" in str(refused.value).lower() or (
        "verification failed" in str(refused.value)
    )
    mapped = transport_error(refused.value, retryable=True)
    assert (mapped.status, mapped.code) == (502, "upstream_unavailable")


async def test_the_default_context_trusts_ssl_cert_file(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    client = FastClient({}, 2.0)  # no context given: connect.default_tls()
    async with RawServer(lambda r, w, n: _ok(r, w, server), tls=pki.server_context()) as server:
        assert await client.post(f"{server.url}/a", b"{}") == b"ok"
    await client.aclose()


async def test_the_fast_client_fails_verification_without_the_ca(pki: Pki) -> None:
    client = FastClient({}, 2.0)  # the system CAs only: the test CA is not among them
    async with RawServer(lambda r, w, n: _ok(r, w, server), tls=pki.server_context()) as server:
        with pytest.raises(
            ConnectError, match=r"TLS certificate verification failed for 127\.0\.0\.1"
        ):
            await client.post(f"{server.url}/a", b"{}")
    await client.aclose()


class ConnectProxy:
    """A tiny HTTP proxy: `CONNECT` tunnels (with a required Basic credential) and
    absolute-form plain-http requests, which it answers itself."""

    def __init__(self, authorization: str | None = None) -> None:
        self.authorization = authorization
        self.heads: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            first = head.split(b"\r\n", 1)[0].decode()
            if not first.startswith("CONNECT "):
                sizes = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
                length = int(sizes[0].split(b":")[1]) if sizes else 0
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")
                await writer.drain()
                await reader.read(1)
                return
            wanted = f"proxy-authorization: {self.authorization}\r\n".encode()
            if self.authorization and wanted not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                await writer.drain()
                return
            host, port = first.split(" ")[1].rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    async with ConnectProxy(authorization="Basic dTpw") as running:  # u:p
        yield running


async def test_https_through_a_proxy_tunnels_with_connect(
    pki: Pki, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://u:p@127.0.0.1:{proxy.port}")
    client = FastClient({}, 2.0, tls=pki.client_context())
    async with RawServer(lambda r, w, n: _ok(r, w, server), tls=pki.server_context()) as server:
        assert await client.post(f"{server.url}/a", b"{}") == b"ok"
        port = server.port
    await client.aclose()
    connect = proxy.heads[0].decode()
    assert connect.startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n")
    assert "proxy-authorization: Basic dTpw\r\n" in connect
    assert server.requests[0].startswith(b"POST /a HTTP/1.1\r\n")  # origin form inside


async def test_plain_http_through_a_proxy_uses_the_absolute_form(
    proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://u:p@127.0.0.1:{proxy.port}")
    client = FastClient({}, 2.0)
    assert await client.post("http://gpu1.internal:8000/v1/x", b"{}") == b"proxied"
    await client.aclose()
    head = proxy.heads[0].decode()
    assert head.startswith("POST http://gpu1.internal:8000/v1/x HTTP/1.1\r\n")
    assert "host: gpu1.internal:8000\r\n" in head
    assert "proxy-authorization: Basic dTpw\r\n" in head


async def test_a_refused_connect_is_a_connect_error(
    pki: Pki, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")  # no credential
    client = FastClient({}, 2.0, tls=pki.client_context())
    with pytest.raises(ConnectError, match=r"refused CONNECT.*407"):
        await client.post("https://127.0.0.1:9/a", b"{}")
    await client.aclose()


async def test_a_kept_alive_tls_connection_the_server_closed_is_replaced(pki: Pki) -> None:
    """The server ends TLS (close_notify) on an idle pooled connection: the next request
    goes out on a new connection instead of failing."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # returning closes the connection: close_notify, then the socket

    client = FastClient({}, 2.0, tls=pki.client_context())
    async with RawServer(handler, tls=pki.server_context()) as server:
        assert await client.post(f"{server.url}/a", b"{}") == b"ok"
        await asyncio.sleep(0.2)  # let the close arrive while the connection is idle
        assert await asyncio.wait_for(client.post(f"{server.url}/a", b"{}"), 10) == b"ok"
    await client.aclose()
    assert server.connections == 2
