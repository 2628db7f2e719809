"""Server-sent events: response lines to `(event, data)` pairs (OpenAI, Anthropic, llama.cpp)."""

from __future__ import annotations


class SSEDecoder:
    """Lines to `(event, data)` pairs, one per blank line, as the SSE spec says.

    Also accepts llama.cpp's `error: {...}` field as an `error` event.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "error":
            self._event = "error"
            self._data.append(value)
        return None

    def flush(self) -> tuple[str, str] | None:
        """The pending event, if any (also called at end of body)."""
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        return (event, "\n".join(data)) if data else None
