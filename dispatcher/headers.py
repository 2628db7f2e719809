"""nats-py's header parsing and encoding, same results, less work per message.

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

import types
from collections.abc import Mapping
from typing import Any

from nats import errors
from nats.aio import client as nats_client
from nats.aio.client import Client
from nats.protocol import command

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


def install(nc: Client) -> None:
    """Parse every message `nc` receives with `parse_header_lines` and encode every publish's
    headers with `encode_headers` (this client only: nats-py calls both through `self`, so
    instance attributes replace them)."""
    nc._parse_header_lines = parse_header_lines  # type: ignore[method-assign]
    nc._send_publish = types.MethodType(_send_publish, nc)  # type: ignore[method-assign]
