"""Token usage of a generation, from the upstream's counts or counted here when it gives none."""

from __future__ import annotations

from collections.abc import Callable

from llmq.schemas.openai import Usage
from llmq.schemas.text import count_tokens


class Tally:
    """Remembers the generated text, per choice, so usage can be counted when the upstream
    gives none (words of one choice never run into another's)."""

    def __init__(self, prompt_tokens: Callable[[], int]) -> None:
        self._prompt_tokens = prompt_tokens
        self._parts: dict[int, list[str]] = {}

    def add(self, text: str | None, choice: int = 0) -> None:
        if text:
            self._parts.setdefault(choice, []).append(text)

    def usage(self, prompt: int | None = None, completion: int | None = None) -> Usage:
        """Upstream counts where given, `count_tokens` for the rest."""
        if prompt is None:
            prompt = self._prompt_tokens()
        if completion is None:
            completion = sum(count_tokens("".join(parts)) for parts in self._parts.values())
        return Usage(prompt, completion, prompt + completion)
