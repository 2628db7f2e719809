"""A multipart/form-data body read as it arrives, part by part, never whole.

`read_multipart` feeds each part's bytes to a sink the caller opens for it (a file part to a
temporary file, a small field to memory), so an upload of any size costs a bounded amount
of memory. Malformed bodies are a 400, never a 500.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from llmq.api.errors import ApiError

MAX_HEADER_BYTES = 16_384
"""Largest header block of one part."""

_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class PartSink(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """The part ended; raise `ApiError` to refuse what it held."""
        ...


OpenPart = Callable[[str, str | None], PartSink]
"""(field name, filename or None) -> where the part's bytes go."""


def header_params(header: str) -> dict[str, str]:
    """`; name="value"` parameters of a header value, names lower-cased."""
    out = {}
    for name, value in _PARAM.findall(header):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[name.lower()] = value
    return out


def boundary_of(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "expected a multipart/form-data body", "invalid_request")
    boundary = header_params(content_type).get("boundary")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "multipart body without a valid boundary", "invalid_request")
    return boundary.encode("latin-1", "replace")


def _malformed(why: str) -> ApiError:
    return ApiError(400, f"malformed multipart body: {why}", "invalid_request")


def _open(head: bytes, open_part: OpenPart) -> PartSink:
    disposition = ""
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            disposition = value.strip()
    params = header_params(disposition)
    if "name" not in params:
        raise _malformed("a part without a name")
    return open_part(params["name"], params.get("filename"))


async def read_multipart(
    chunks: AsyncIterator[bytes], content_type: str, open_part: OpenPart
) -> None:
    """Read the body from `chunks`, handing each part to the sink `open_part` gives."""
    delimiter = b"\r\n--" + boundary_of(content_type)
    buf = bytearray(b"\r\n")  # the first delimiter has no line break before it
    state = "preamble"
    sink: PartSink | None = None
    async for chunk in chunks:
        buf += chunk
        while True:
            if state == "preamble":
                at = buf.find(delimiter)
                if at < 0:
                    del buf[: max(0, len(buf) - len(delimiter))]
                    break
                del buf[: at + len(delimiter)]
                state = "delimited"
            elif state == "delimited":
                if len(buf) < 2:
                    break
                if buf[:2] == b"--":
                    state = "done"
                    break
                if buf[:2] != b"\r\n":
                    raise _malformed("garbage after a boundary")
                del buf[:2]
                state = "headers"
            elif state == "headers":
                at = buf.find(b"\r\n\r\n")
                if at < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        raise _malformed("part headers too long")
                    break
                sink = _open(bytes(buf[:at]), open_part)
                del buf[: at + 4]
                state = "body"
            elif state == "body":
                assert sink is not None
                at = buf.find(delimiter)
                if at < 0:
                    safe = len(buf) - len(delimiter) + 1
                    if safe > 0:
                        sink.write(bytes(buf[:safe]))
                        del buf[:safe]
                    break
                sink.write(bytes(buf[:at]))
                sink.close()
                sink = None
                del buf[: at + len(delimiter)]
                state = "delimited"
            else:  # done: an epilogue is ignored
                buf.clear()
                break
    if state != "done":
        raise _malformed("the body ended before its closing boundary")
