"""Newline-delimited JSON: one typed object a line, blank lines skipped (Ollama's streams)."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")


class NDJSONDecoder(Generic[T]):
    """One response line to one `T`; a `msgspec.DecodeError` means a malformed upstream."""

    def __init__(self, kind: type[T]) -> None:
        self._decoder = msgspec.json.Decoder(kind)

    def feed(self, line: str) -> T | None:
        """The line's object, or None for a blank line."""
        if not line.strip():
            return None
        return self._decoder.decode(line)
