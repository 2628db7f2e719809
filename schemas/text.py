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


def estimate_text_tokens(text: str) -> int:
    """A high guess of one text's tokens, for reservations and `count_tokens` estimates:
    tokenizers give about one token per 3-4 UTF-8 bytes of English and one per CJK character
    (3 bytes), never fewer than one a word."""
    return max(len(text.encode()) // 3, len(text.split()))
