"""Checking a batch input file as it streams in, line by line, without holding it.

The same verdict `jsonl.parse_input` gives a whole file (UTF-8, at least one line that is a
JSON object, at most `max_lines` requests); problems of single lines are not refusals: they
end up in the batch's error file.
"""

from __future__ import annotations

import msgspec

from llmq.dispatcher.batch.jsonl import NotJsonl, TooManyLines

MAX_LINE_BYTES = 8 * 1024 * 1024
"""Longest line held while it is checked (a request that long cannot run anyway)."""

_object = msgspec.json.Decoder(dict[str, msgspec.Raw])


class JsonlCheck:
    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self.requests = 0
        self._number = 0
        self._any_object = False
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        """Raises `NotJsonl` or `TooManyLines` as soon as the file cannot be one."""
        self._partial += data
        end = self._partial.rfind(b"\n")
        if end < 0:
            if len(self._partial) > MAX_LINE_BYTES:
                raise NotJsonl(f"line {self._number + 1} is longer than {MAX_LINE_BYTES} bytes")
            return
        block = bytes(self._partial[:end])
        del self._partial[: end + 1]
        for line in block.split(b"\n"):
            self._line(line)

    def finish(self) -> None:
        self._line(bytes(self._partial))
        self._partial.clear()
        if not self.requests:
            raise NotJsonl("the file is empty")
        if not self._any_object:
            raise NotJsonl("no line of the file is a JSON object; expected JSONL")

    def _line(self, raw: bytes) -> None:
        self._number += 1
        line = raw.strip()
        if not line:
            return
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise NotJsonl(f"the file is not UTF-8 text (line {self._number})") from None
        self.requests += 1
        if self.requests > self.max_lines:
            raise TooManyLines(f"the file has more than {self.max_lines} requests")
        if not self._any_object:
            try:
                _object.decode(line)
                self._any_object = True
            except msgspec.DecodeError:
                pass
