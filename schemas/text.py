"""Text and token helpers both rooms need: the api estimates a prompt's tokens before it
reserves quota, the worker counts what a backend did not report. No I/O."""

from __future__ import annotations

from llmq.schemas.openai import Message


def count_tokens(text: str) -> int:
    """Whitespace word count: echo's tokenizer, and the fallback when an upstream gives none."""
    return len(text.split())


def message_text(message: Message) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def prompt_tokens(messages: list[Message]) -> int:
    return sum(count_tokens(message_text(m)) for m in messages)
