"""The nats-py gate: every shortcut into nats-py's private parts, on only for the nats-py
versions they were tested with (`GATE`; `llmq._fast` says how the gate works).

- header parsing and encoding (`install`): same results, less work per message;
- the reply inbox's direct delivery (`deliver_directly`): frames straight from nats-py's read
  loop to their job's mailbox;
- a KV watcher's subscription (`watcher_caught_up`), to end a scan only once every entry the
  server delivered was handled, and (`delete_watcher_consumer`) to delete a scan's consumer
  at once;
- the server's INFO (`server_info`), to name a missing client certificate;
- a round trip to the server (`round_trip`) whose PING goes out behind every publish made
  before it and whose PONG future is never cancelled: nats-py 2.16's `flush` writes its
  PING straight to the socket, ahead of the publishes still in its pending buffer (so its
  PONG can come before the server read them), and cancels the future when its timeout
  passes, and the PONG that comes later then stops the client's read loop
  (`InvalidStateError`: connected, and deaf).

Shut, each takes nats-py's public path: its own header code, a subscription callback, the
watcher's end-of-initial-values marker, a scan's consumer left to the server's inactivity
threshold, a refusal message without the INFO's hint, and `flush` for a round trip (whose
PING may overtake publishes still buffered: a round trip then does not prove the server has
them).

## Headers

nats-py (2.16) parses every message's headers in `Client._parse_header_lines`, which checks
each header name for whitespace with a generator over its characters: on the api (every
reply frame) and the worker (every job) that generator is the largest part of the parse.
Its `_send_publish` checks every header name of every publish against a regular expression
and builds the block with a dozen small appends. Here the verdict on a name (its key, or
None when nats-py would skip it; its encoded `Name: ` or nats-py's error) is reached by
nats-py's own rule once per distinct name and remembered: an llmq process sees a handful of
header names. The bytes on the wire and the dicts read are the same for every input.
`install` puts both on a client; `connect` does it for every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections.abc import Callable, Mapping
from typing import Any

from nats import errors
from nats.aio import client as nats_client
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue
from nats.protocol import command

from llmq._fast import Gate

GATE = Gate("nats-py", {"nats-py": ("2.16", "2.17")})
"""Tested with nats-py 2.16 (the copied `_send_publish` and `_parse_header_lines` are 2.16's)."""
log = logging.getLogger(__name__)

_CRLF = b"\r\n"
_MAX_NAMES = 1024
"""Distinct header names remembered, at most (names come from the network: bounded)."""
_MAX_NAME_BYTES = 128
"""Longer names are judged every time, never remembered."""
_names: dict[bytes, str | None] = {}


def _key(name: bytes) -> str | None:
    """nats-py's rule for one header name: stripped, ASCII, no whitespace inside (the
    `str.isspace` sense, which includes the ASCII separators 0x1c-0x1f); else None."""
    stripped = name.strip()
    if not stripped.isascii():
        return None
    key = stripped.decode("ascii")
    if any(c.isspace() for c in key):
        return None
    return key


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """`Client._parse_header_lines` of nats-py 2.16: the same dict for every input."""
    out: dict[str, str] = {}
    names = _names
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:  # also an empty line
            continue
        try:
            key = names[name]
        except KeyError:
            key = _key(name)
            if len(name) <= _MAX_NAME_BYTES and len(names) < _MAX_NAMES:
                names[name] = key
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


_HEAD = b"NATS/1.0\r\n"
_SKIP = b""
"""A name nats-py leaves out (empty once stripped)."""
_encoded: dict[str, bytes] = {}


def _encoded_name(name: str) -> bytes:
    """nats-py's rule for one header name when publishing: stripped; empty is left out; a
    name that is not an HTTP token raises its BadHeaderError (never remembered)."""
    key = name.strip()
    if not key:
        return _SKIP
    if not nats_client._HEADER_KEY_RE.fullmatch(key):
        raise errors.BadHeaderError(key)
    return key.encode() + b": "


def encode_headers(headers: Mapping[str, Any]) -> bytearray:
    """The header block `Client._send_publish` of nats-py 2.16 builds: the same bytes."""
    out = bytearray(_HEAD)
    names = _encoded
    for name, value in headers.items():
        encoded = names.get(name)
        if encoded is None:
            encoded = _encoded_name(name)
            if len(name) <= _MAX_NAME_BYTES and len(names) < _MAX_NAMES:
                names[name] = encoded
        if not encoded:
            continue
        text = value.strip()
        if "\r" in text or "\n" in text:
            text = text.translate(nats_client._HEADER_VALUE_NEWLINES)
        out += encoded
        out += text.encode()
        out += _CRLF
    out += _CRLF
    return out


async def _send_publish(
    self: Client,
    subject: str,
    reply: str,
    payload: bytes,
    payload_size: int,
    headers: dict[str, Any] | None,
) -> None:
    """`Client._send_publish` of nats-py 2.16 with the header block from `encode_headers`."""
    if subject == "":
        raise errors.BadSubjectError
    if headers is None:
        pub_cmd = command.pub_cmd(subject, reply, payload)
    else:
        pub_cmd = command.hpub_cmd(subject, reply, encode_headers(headers), payload)
    self.stats["out_msgs"] += 1
    self.stats["out_bytes"] += payload_size
    await self._send_command(pub_cmd)
    if self._flush_queue is not None and self._flush_queue.empty():
        await self._flush_pending()


def install(nc: Client) -> bool:
    """Parse every message `nc` receives with `parse_header_lines` and encode every publish's
    headers with `encode_headers` (this client only: nats-py calls both through `self`, so
    instance attributes replace them). False, and nothing done, when the gate is shut."""
    if not GATE.open:
        return False
    nc._parse_header_lines = parse_header_lines  # type: ignore[method-assign]
    nc._send_publish = types.MethodType(_send_publish, nc)  # type: ignore[method-assign]
    return True


# --- the reply inbox ----------------------------------------------------------------------


class _Delivery:
    """Stands in for the inbox subscription's pending queue, so nats-py's read loop hands
    each frame straight to its job's mailbox: no subscription task woken per frame and no
    queue between them (one task switch less per frame; the api reads three or more frames
    per job). Only what nats-py calls on a callback-less subscription's queue is here."""

    __slots__ = ("_route", "_sub")

    def __init__(self, sub: Subscription, route: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._route = route

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)  # nats-py counted it as waiting: it is not
        try:
            self._route(msg)
        except Exception:  # never into nats-py's read loop: it would drop the connection
            log.exception("a message on %s could not be routed", msg.subject)

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None


async def subscribe_direct(nc: Client, subject: str, route: Callable[[Msg], None]) -> Subscription:
    """Subscribe to `subject` with `route` called for every message, unbounded: from nats-py's
    read loop itself when the gate is open, else through an ordinary subscription callback
    (nats-py's one task per subscription). `route` must not raise."""
    if not GATE.open:

        async def callback(msg: Msg) -> None:
            try:
                route(msg)
            except Exception:
                log.exception("a message on %s could not be routed", msg.subject)

        return await nc.subscribe(
            subject, cb=callback, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
    sub = await nc.subscribe(subject, pending_msgs_limit=-1, pending_bytes_limit=-1)
    early: asyncio.Queue[Msg] = sub._pending_queue
    sub._pending_queue = _Delivery(sub, route)  # type: ignore[assignment]
    while not early.empty():
        route(early.get_nowait())
    return sub


# --- KV watchers ----------------------------------------------------------------------------


async def watcher_caught_up(watcher: KeyValue.KeyWatcher, handled: int) -> bool:
    """Whether a watcher that sent its end-of-initial-values marker has delivered everything:
    nats-py may send the marker before entries the server already pushed reach us, so with
    the gate open this asks the watcher's consumer how many it delivered (nats-py keeps that
    subscription private). Shut, the marker is taken at its word."""
    if not GATE.open:
        return True
    sub = watcher._sub
    if sub is None:
        return True
    info = await sub.consumer_info()
    delivered = info.delivered.consumer_seq if info.delivered else 0
    return not info.num_pending and handled >= (delivered or 0)


async def delete_watcher_consumer(watcher: KeyValue.KeyWatcher) -> None:
    """Delete a scan's consumer now, rather than when nats-server notices it is idle: a
    flood of list calls leaves none behind (nats-server refuses new consumers past a limit).
    Needs the watcher's private subscription; shut, the consumer's inactive threshold
    removes it."""
    if not GATE.open:
        return
    sub = watcher._sub
    if sub is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await sub._js.delete_consumer(sub._stream, sub._consumer)


def server_info(nc: Client) -> dict[str, Any]:
    """What the server said in its INFO (`tls_verify`: it wants a client certificate), for a
    clearer refusal message; empty when the gate is shut (nats-py keeps it private)."""
    if not GATE.open:
        return {}
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    return info


# --- outbound bytes -------------------------------------------------------------------------


def outbound_bytes(nc: Client) -> int:
    """Bytes published on `nc` and not yet handed to the kernel: nats-py's pending buffer
    (public) and, with the gate open, what its TCP transport still holds (private: the
    flusher empties the pending buffer into it at once, so under a slow socket that is
    where the bytes wait)."""
    pending = nc.pending_data_size
    if not GATE.open:
        return pending
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None:
        return pending
    size: int = transport.get_write_buffer_size()
    return pending + size


# --- round trips ----------------------------------------------------------------------------

_LINK_POLL = 0.25
"""Seconds between looks at the link while a round trip waits (a reconnect drops nats-py's
PONG futures unanswered)."""


async def round_trip(nc: Client, timeout: float) -> bool:
    """True once the server answered a PING sent now: it reads a connection's bytes in
    order, so it has every message published before the call, and it answers after writing
    us everything it queued for this connection before, so every message it held then has
    been read (and, on the inbox's direct delivery, routed). False after `timeout` seconds,
    or as soon as the link is down. Never raises.

    Open, nats-py's pending buffer is handed to the socket first and the PING written after
    it (nats-py's `_send_ping` writes straight to the socket, ahead of that buffer); its
    future is put in nats-py's own PONG list and never cancelled (a late PONG resolves it
    harmlessly). Shut, nats-py's `flush`: its PING may overtake buffered publishes, and its
    timeout cancels the future (see the module's docstring)."""
    if timeout <= 0 or not nc.is_connected:
        return False
    if not GATE.open:
        try:
            await nc.flush(timeout=timeout)  # type: ignore[arg-type]
        except Exception:
            return False
        return True
    loop = asyncio.get_running_loop()
    pong: asyncio.Future[bool] = loop.create_future()
    try:
        _hand_pending_to_socket(nc)
        await nc._send_ping(pong)  # no await between the two: nothing gets in between
    except Exception:
        return False
    end = loop.time() + timeout
    while not pong.done():
        left = end - loop.time()
        if left <= 0 or not nc.is_connected:
            return False
        await asyncio.wait((pong,), timeout=min(left, _LINK_POLL))
    return True


def _hand_pending_to_socket(nc: Client) -> None:
    """What nats-py's flusher task does with the pending buffer, now (it still drains the
    socket): the transport keeps the order of its writes, so a PING written next goes out
    behind these bytes. A PING appended to the buffer instead could be overtaken on the wire
    by a keep-alive PING that `_send_ping` writes meanwhile, whose PONG would then resolve
    the wrong future (nats-py matches PONGs to PINGs by order)."""
    pending = nc._pending
    if pending and nc._transport is not None:
        nc._pending = []
        nc._pending_data_size = 0
        nc._transport.writelines(pending)
