"""Opening one connection to an upstream for `FastClient`: plain, TLS, or through a proxy.

The route to an origin is decided once per origin from the standard proxy variables
(`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, read by `urllib.request`): an https
origin behind a proxy is reached through a `CONNECT` tunnel and TLS is started inside it; a
plain-http origin behind a proxy gets its requests in absolute form on the proxy's own
connection. TLS (`tls.TlsSession`, in memory over the plain connection) verifies the upstream's
certificate and host name against the system CA
bundle, or the file `SSL_CERT_FILE` / directory `SSL_CERT_DIR` names, and offers only
`http/1.1` in ALPN. Failures become llmq's `ConnectError` / `ConnectTimeout` with a message
that says which step failed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from llmq.worker.upstream.client import ConnectError, ConnectTimeout
from llmq.worker.upstream.tls import TlsSession

MAX_PROXY_HEAD = 16 * 1024

Origin = tuple[str, str, int]
"""(scheme, host, port) of an upstream: the key of a connection pool."""


class UnsupportedProxy(ValueError):
    """A proxy this client cannot use (not `http://`); `choice` falls back to httpx."""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None
    """The `Proxy-Authorization` value for credentials in the proxy URL, if any."""


class Target(NamedTuple):
    """Where a URL's requests go and how they are addressed."""

    origin: Origin
    host_header: str
    """The `host` header's value."""
    target: str
    """The request target: origin form, or absolute form for a plain-http proxy."""
    extra: str
    """Header lines after `host` (`proxy-authorization` for a plain-http proxy)."""


def target_of(url: str, proxy_of: Callable[[Origin], Proxy | None]) -> Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    origin = (scheme, host, port)
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header = f"{host_header}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = proxy_of(origin)
    extra = ""
    if proxy is not None and scheme == "http":
        target = f"http://{host_header}{target}"
        if proxy.authorization:
            extra = f"proxy-authorization: {proxy.authorization}\r\n"
    return Target(origin, host_header, target, extra)


def default_tls() -> ssl.SSLContext:
    """Verifying context: system CAs (or `SSL_CERT_FILE`/`SSL_CERT_DIR`), HTTP/1.1 only."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def proxy_for(scheme: str, host: str) -> Proxy | None:
    """The proxy the environment names for `scheme://host`, None for a direct connection.

    Raises `UnsupportedProxy` for a proxy URL that is not plain `http://`."""
    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass(host):
        return None
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UnsupportedProxy(f"proxy scheme {parts.scheme!r} is not supported")
    authorization = None
    if parts.username:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
    return Proxy(parts.hostname, parts.port or 80, authorization)


class Connection:
    """One pooled connection; with `tls`, everything sent and read goes through it."""

    __slots__ = ("reader", "tls", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: TlsSession | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.tls = tls

    def usable(self) -> bool:
        """Open, and nothing unread: bytes that arrived while the connection sat in the pool
        would be read as the next request's answer."""
        unread: bytes = getattr(self.reader, "_buffer", b"")  # what the transport read ahead
        return not (
            self.writer.is_closing()
            or self.reader.at_eof()
            or unread
            or (self.tls and self.tls.closed)
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def send(self, data: bytes) -> None:
        self.writer.write(self.tls.encrypt(data) if self.tls else data)

    async def receive(self, size: int) -> bytes:
        """The next bytes of the response (decrypted for https); b"" at the end."""
        tls = self.tls
        while True:
            if tls is not None and tls.closed:
                return b""
            data = await self.reader.read(size)
            if not data or tls is None:
                return data
            plain = tls.decrypt(data)
            tls.flush(self.writer)
            if plain is None:
                return b""
            if plain:
                return plain


async def open_stream(
    origin: Origin, proxy: Proxy | None, tls: ssl.SSLContext | None, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, TlsSession | None]:
    """A connected stream to `origin` within `timeout` seconds; for https, with the verified
    `TlsSession` that everything sent and read on the stream must go through."""
    scheme, host, port = origin
    where = f"{host}:{port}" if proxy is None else f"proxy {proxy.host}:{proxy.port}"
    try:
        async with asyncio.timeout(timeout):
            if proxy is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            if scheme != "https":
                return reader, writer, None
            try:
                if proxy is not None:
                    await _tunnel(reader, writer, host, port, proxy)
                session = TlsSession(tls or default_tls(), host)
                await session.handshake(reader, writer)
            except BaseException:
                writer.close()
                raise
            return reader, writer, session
    except TimeoutError:
        raise ConnectTimeout(f"no connection to {where} within {timeout:g}s") from None
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or exc.reason or str(exc)
        raise ConnectError(f"TLS certificate verification failed for {host}: {reason}") from None
    except ssl.SSLError as exc:
        raise ConnectError(f"TLS handshake with {host} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise ConnectError(f"{exc.strerror or exc} ({where})") from None


async def _tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    proxy: Proxy,
) -> None:
    """`CONNECT host:port` through the proxy; returns once it answered 2xx."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"
    if proxy.authorization:
        head += f"proxy-authorization: {proxy.authorization}\r\n"
    writer.write(head.encode("latin-1") + b"\r\n")
    await writer.drain()
    try:
        answer = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ConnectError(f"proxy {proxy.host}:{proxy.port} sent an oversized answer") from None
    except asyncio.IncompleteReadError:
        raise ConnectError(
            f"proxy {proxy.host}:{proxy.port} closed the connection during CONNECT"
        ) from None
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = parts[1] if len(parts) > 1 else ""
    if not status.startswith("2"):
        raise ConnectError(
            f"proxy {proxy.host}:{proxy.port} refused CONNECT to {authority}: {status_line}"
        )
