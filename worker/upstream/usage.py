"""Token usage of a generation, from the upstream's counts or counted here when it gives none."""

from __future__ import annotations

from collections.abc import Callable

from llmq.schemas.openai import Usage
from llmq.schemas.text import count_tokens


class Tally:
    """Remembers the generated text so usage can be counted when the upstream gives none."""

    def __init__(self, prompt_tokens: Callable[[], int]) -> None:
        self._prompt_tokens = prompt_tokens
        self._parts: list[str] = []

    def add(self, text: str | None) -> None:
        if text:
            self._parts.append(text)

    def usage(self, prompt: int | None = None, completion: int | None = None) -> Usage:
        """Upstream counts where given, `count_tokens` for the rest."""
        if prompt is None:
            prompt = self._prompt_tokens()
        if completion is None:
            completion = count_tokens("".join(self._parts))
        return Usage(prompt, completion, prompt + completion)
