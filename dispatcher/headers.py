"""nats-py's header-block parser, same results, less work per message.

nats-py (2.16) parses every message's headers in `Client._parse_header_lines`, which checks
each header name for whitespace with a generator over its characters: on the api (every
reply frame) and the worker (every job) that generator is the largest part of the parse.
Here the verdict on a name (its key, or None when nats-py would skip it) is computed by
nats-py's own rule once per distinct name and remembered: an llmq process sees a handful of
header names. `install` puts the parser on a client; `connect` does it for every connection.
"""

from __future__ import annotations

from nats.aio.client import Client

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


def install(nc: Client) -> None:
    """Use `parse_header_lines` for every message `nc` receives (this client only; nats-py
    calls it as `self._parse_header_lines(raw)`, so an instance attribute replaces it)."""
    nc._parse_header_lines = parse_header_lines  # type: ignore[method-assign]
