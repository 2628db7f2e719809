"""Anthropic's Messages API on the wire: the request as the api validates it before any quota
is touched, and the token estimate both the reservation and `count_tokens` use.

The job body is the client's JSON, not an encoding of these types (a `message` job passes
to an Anthropic upstream byte for byte): they only check that every field llmq or a
translating worker reads has the type Anthropic documents. Unknown fields and content
block types pass; the upstream, or the translating worker, judges them.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from llmq.schemas.text import estimate_text_tokens

IMAGE_TOKENS: Final = 1600
"""What one image counts in an estimate (Anthropic: about width * height / 750, at most
about 1,600 for an image it does not downscale)."""


class CacheControl(Struct, forbid_unknown_fields=False):
    type: str
    ttl: str | UnsetType = UNSET


class TextBlock(Struct, forbid_unknown_fields=False):
    text: str
    cache_control: CacheControl | UnsetType | None = UNSET
    citations: list[dict[str, Any]] | UnsetType | None = UNSET


class Source(Struct, forbid_unknown_fields=False):
    type: str
    media_type: str | UnsetType = UNSET
    data: str | UnsetType = UNSET
    url: str | UnsetType = UNSET


class ImageBlock(Struct, forbid_unknown_fields=False):
    source: Source
    cache_control: CacheControl | UnsetType | None = UNSET


class DocumentBlock(Struct, forbid_unknown_fields=False):
    source: dict[str, Any]
    cache_control: CacheControl | UnsetType | None = UNSET
    title: str | UnsetType | None = UNSET
    context: str | UnsetType | None = UNSET


class ToolUseBlock(Struct, forbid_unknown_fields=False):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | UnsetType | None = UNSET


class ToolResultBlock(Struct, forbid_unknown_fields=False):
    tool_use_id: str
    content: str | list[dict[str, Any]] | UnsetType = UNSET
    is_error: bool | UnsetType = UNSET
    cache_control: CacheControl | UnsetType | None = UNSET


class ThinkingBlock(Struct, forbid_unknown_fields=False):
    thinking: str
    signature: str


class RedactedThinkingBlock(Struct, forbid_unknown_fields=False):
    data: str


BLOCKS: Final[dict[str, type[Struct]]] = {
    "text": TextBlock,
    "image": ImageBlock,
    "document": DocumentBlock,
    "tool_use": ToolUseBlock,
    "tool_result": ToolResultBlock,
    "thinking": ThinkingBlock,
    "redacted_thinking": RedactedThinkingBlock,
}
"""The content blocks whose fields are checked; other types pass as they are."""


class InputMessage(Struct, forbid_unknown_fields=False):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class Metadata(Struct, forbid_unknown_fields=False):
    user_id: str | UnsetType | None = UNSET


class ToolChoice(Struct, forbid_unknown_fields=False):
    type: Literal["auto", "any", "tool", "none"]
    name: str | UnsetType = UNSET
    disable_parallel_tool_use: bool | UnsetType = UNSET


class Tool(Struct, forbid_unknown_fields=False):
    name: str
    type: str | UnsetType | None = UNSET
    description: str | UnsetType = UNSET
    input_schema: dict[str, Any] | UnsetType = UNSET
    cache_control: CacheControl | UnsetType | None = UNSET


class Thinking(Struct, forbid_unknown_fields=False):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | UnsetType = UNSET


class CountRequest(Struct, forbid_unknown_fields=False):
    """`POST /v1/messages/count_tokens`: a Messages request without `max_tokens`."""

    model: str
    messages: list[InputMessage]
    system: str | list[TextBlock] | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    thinking: Thinking | UnsetType = UNSET


class MessageRequest(CountRequest, forbid_unknown_fields=False):
    """`POST /v1/messages`."""

    max_tokens: int | UnsetType = UNSET
    """Required: checked by the api, so that its 400 says so as Anthropic's does."""
    stream: bool = False
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    top_k: int | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET

    @property
    def user(self) -> str:
        """`metadata.user_id`: the end user, booked with the usage."""
        meta = self.metadata
        if isinstance(meta, Metadata) and isinstance(meta.user_id, str):
            return meta.user_id
        return ""


message_request_decoder: Final = msgspec.json.Decoder(MessageRequest)
count_request_decoder: Final = msgspec.json.Decoder(CountRequest)


class InvalidBlock(ValueError):
    """A content block whose fields have the wrong types; `param` is its JSON path."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check_blocks(request: CountRequest) -> None:
    """Every known content block of every message (and tool result) has the types Anthropic
    documents; InvalidBlock names the first that does not."""
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            _check(message.content, f"messages.{i}.content")


def _check(blocks: list[dict[str, Any]], path: str) -> None:
    for j, block in enumerate(blocks):
        kind = block.get("type")
        where = f"{path}.{j}"
        if not isinstance(kind, str):
            raise InvalidBlock("every content block needs a string `type`", f"{where}.type")
        shape = BLOCKS.get(kind)
        if shape is None:
            continue
        try:
            checked = msgspec.convert(block, shape, strict=True)
        except msgspec.ValidationError as exc:
            raise InvalidBlock(f"{where}: {exc}", where) from None
        if isinstance(checked, ToolResultBlock) and isinstance(checked.content, list):
            _check(checked.content, f"{where}.content")


def estimate_tokens(request: CountRequest) -> int:
    """A high guess of the prompt's tokens (as `preparation.estimate_prompt_tokens` guesses a
    chat prompt's): per text, its UTF-8 bytes / 3 or its words, whichever is more; tool
    inputs, schemas and other blocks by their JSON; an image `IMAGE_TOKENS`."""
    total = 0
    system = request.system
    if isinstance(system, str):
        total += estimate_text_tokens(system)
    elif isinstance(system, list):
        total += sum(estimate_text_tokens(block.text) for block in system)
    for message in request.messages:
        total += 4
        content = message.content
        if isinstance(content, str):
            total += estimate_text_tokens(content)
        else:
            total += sum(_block_tokens(block) for block in content)
    if isinstance(request.tools, list):
        total += len(msgspec.json.encode(request.tools)) // 3
    return total or 1


def _block_tokens(block: dict[str, Any]) -> int:
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return estimate_text_tokens(block["text"])
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "tool_result" and isinstance(block.get("content"), list):
        return sum(_block_tokens(b) for b in block["content"] if isinstance(b, dict))
    if kind == "tool_result" and isinstance(block.get("content"), str):
        return estimate_text_tokens(block["content"])
    if kind == "document":
        source = block.get("source")
        data = source.get("data") if isinstance(source, dict) else None
        if isinstance(data, str):
            return len(data) // 4  # base64: 3 bytes in 4 characters, a token per 3 bytes
    return len(msgspec.json.encode(block)) // 3
