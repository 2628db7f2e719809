"""The HTTP edge: limits a connection meets before any tenant work (docs/security.md).

uvicorn's httptools protocol has no header size limit and no deadline for a half-sent
request: one client trickling a huge header held the api's CPU and memory, and half-sent
requests held file descriptors for good. `EdgeProtocol` is that protocol with
- at most `max_header_bytes` before the end of the headers (431; counted as bytes arrive,
  so httptools never buffers more than one read past it) and `max_header_count` fields;
- `header_timeout` seconds from the connection (or the next request's first byte) to the
  end of its headers, and `body_timeout` seconds between two reads of a body the app waits
  for (408);
- `max_connections` open at once (a 503 to each one past it).
Idle keep-alive connections close after uvicorn's `timeout_keep_alive`. A response the app
ends on purpose before its last byte (a stream whose client stopped reading) closes its
connection through the scope's `END_MID_RESPONSE` extension.

Deadlines cost no timer per request: each connection notes when it began to wait (one
`monotonic()` call per read) and one sweeper per server, running while connections are
open, closes the late ones (bench/edge.py measures the cost per request).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger(__name__)

IDLE, HEADERS, BODY = 0, 1, 2
"""What a connection waits for: nothing from the client (a response under way, or between
requests: uvicorn's keep-alive timer), the end of a request's headers, more of its body."""
LINGER = 2.0
"""Seconds a refused connection's further bytes are read and dropped before it closes: a
client still sending would otherwise get a reset instead of the answer."""
FD_RESERVE = 256
"""File descriptors kept for everything but client connections (NATS, Redis, files)."""
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}
_REASONS[503] = "Service Unavailable"
END_MID_RESPONSE = "llmq.end_mid_response"
"""The scope extension whose `end` (a callable, no arguments) ends the request's response
where it is, on purpose: see `end_mid_response`."""


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_header_bytes: int = 65_536
    max_header_count: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 4096

    @property
    def sweep_every(self) -> float:
        return min(max(min(self.header_timeout, self.body_timeout) / 4, 0.05), 1.0)


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the process's file-descriptor limit would run out first."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


class Refused(Exception):
    """Raised from a parser callback: answer `status` and close."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def refusal_bytes(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response with an OpenAI-style error body, closing the connection."""
    body = msgspec.json.encode(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    retry = b"retry-after: 1\r\n" if status == 503 else b""
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode()
    return head + retry + b"\r\n" + body


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the edge's limits; `with_limits` makes the class
    uvicorn's `Config(http=...)` takes."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()

    @classmethod
    def with_limits(cls, limits: EdgeLimits) -> type[EdgeProtocol]:
        return type("EdgeProtocol", (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = HEADERS
        self._since = 0.0
        self._header_bytes = 0
        self._now = 0.0
        """When the current read arrived (`data_received`), for the parser's callbacks."""
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = time.monotonic()
        _Sweeper.ensure(self)
        if len(self.connections) > self.limits.max_connections:
            self.refuse(Refused(503, "Too many open connections; retry.", "too_many_connections"))

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped
        self._unset_keepalive_if_required()
        now = self._now = time.monotonic()
        phase = self._phase
        if phase == BODY:
            self._since = now  # one more read of the body
        else:
            if phase == IDLE:  # the next request's first bytes
                self._phase, self._since, self._header_bytes = HEADERS, now, 0
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__cause__, Refused):
                self.refuse(exc.__cause__)
            else:
                log.info("invalid HTTP request from %s", _peer(self.client))
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._phase == HEADERS and self._header_bytes > self.limits.max_header_bytes:
            self.refuse(Refused(431, _too_large(self.limits), "request_header_too_large"))

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.limits.max_header_count:
            raise Refused(431, _too_large(self.limits), "request_header_too_large")
        self._phase = BODY
        self._since = self._now
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # (not on an upgrade)
            extensions = self.scope.get("extensions")
            if extensions is None:
                extensions = self.scope["extensions"] = {}
            extensions[END_MID_RESPONSE] = {"end": functools.partial(end_mid_response, cycle)}

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = IDLE

    def check(self, now: float) -> None:
        """The sweeper's look at this connection: refuse it if it is late."""
        if self._phase == HEADERS:
            if now - self._since > self.limits.header_timeout:
                self.refuse(Refused(408, "Request headers not received in time.", "timeout"))
        elif self._phase == BODY:
            if self.flow is not None and self.flow.read_paused:
                self._since = now  # the app is not reading: the client is not late
            elif now - self._since > self.limits.body_timeout:
                self.refuse(Refused(408, "Request body not received in time.", "timeout"))

    def refuse(self, refused: Refused) -> None:
        """Answer `refused` (unless this request's response has begun) and close."""
        answered = self._phase == BODY and self.cycle is not None and self.cycle.response_started
        self._phase = IDLE
        transport = self.transport
        if self._refused or transport is None or transport.is_closing():
            return
        self._refused = True
        log.debug(
            "refused a connection from %s: %d %s",
            _peer(self.client),
            refused.status,
            refused.message,
        )
        cycle = self.cycle  # (a keep-alive connection's is the last request's)
        if answered or (
            cycle is not None and cycle.response_started and not cycle.response_complete
        ):
            transport.close()  # mid-response or answered: nothing more can be said
            return
        transport.write(refusal_bytes(refused.status, refused.message, refused.code))
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()  # drop what is still coming, then close
        self.loop.call_later(LINGER, transport.close)


def end_mid_response(cycle: RequestResponseCycle) -> None:
    """Close the connection of a response the app ends before its last byte on purpose:
    what is written still goes out, then the client sees the body cut short (an HTTP end
    would tell it the stream was whole). Marked disconnected, as after a close: uvicorn's
    later sends do nothing, and it does not log the app's return as a response it forgot to
    complete."""
    if cycle.response_complete or cycle.disconnected:
        return
    cycle.disconnected = True
    cycle.keep_alive = False
    cycle.transport.close()


class _Sweeper:
    """Closes late connections of one server every `sweep_every` seconds while any is open."""

    _key = "llmq_edge_sweeper"

    @classmethod
    def ensure(cls, protocol: EdgeProtocol) -> None:
        state = protocol.server_state
        task: asyncio.Task[None] | None = getattr(state, cls._key, None)
        if task is None or task.done():
            sweep = cls._sweep(protocol.connections, protocol.limits)
            setattr(state, cls._key, protocol.loop.create_task(sweep, name="edge-sweeper"))

    @staticmethod
    async def _sweep(connections: set[Any], limits: EdgeLimits) -> None:
        while connections:
            await asyncio.sleep(limits.sweep_every)
            now = time.monotonic()
            for connection in list(connections):
                if isinstance(connection, EdgeProtocol):
                    connection.check(now)


def _too_large(limits: EdgeLimits) -> str:
    return (
        f"Request headers too large: at most {limits.max_header_bytes} bytes and "
        f"{limits.max_header_count} fields."
    )


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"
