"""An Anthropic Messages request as an OpenAI chat request, for a worker whose backend speaks
chat (openai, ollama, echo). Pure functions of JSON values; `Unsupported` names the first
field a chat backend cannot honour (a 400, never a silent drop).

What maps (docs/anthropic.md has the table): `system` → a system message; text, image and
document blocks → content parts; `tool_use` → assistant `tool_calls`; `tool_result` → `tool`
messages; `tools` / `tool_choice` → function tools; `stop_sequences` → `stop`; `thinking`
→ `reasoning_effort` (`adaptive`: none, the backend's default); `metadata.user_id` → `user`.
Accepted and not sent: `cache_control` (a caching hint; chat servers cache prompt prefixes
by themselves), earlier turns' `thinking` / `redacted_thinking` blocks (Anthropic leaves
them out of the context too) and so `context_management` edits that clear thinking.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

PASSED: Final = frozenset({"model", "max_tokens", "temperature", "top_p", "top_k"})
"""Fields with the same name and meaning in a chat request."""
MAPPED: Final = frozenset(
    {
        "messages",
        "system",
        "stream",
        "stop_sequences",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "context_management",
    }
)
EFFORTS: Final = ((2048, "low"), (8192, "medium"))
"""Thinking budgets up to these tokens → `reasoning_effort`; above the last: `high`."""
HISTORY_ONLY: Final = frozenset({"thinking", "redacted_thinking"})
"""Blocks of earlier assistant turns that Anthropic itself leaves out of the context."""

_encoder = msgspec.json.Encoder()


class Unsupported(ValueError):
    """A field or value a chat backend cannot honour; `param` is its path."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def chat_request(request: dict[str, Any]) -> dict[str, Any]:
    """The chat request `request` (a Messages request) stands for."""
    for field in request:
        if field not in PASSED and field not in MAPPED:
            raise Unsupported(f"`{field}` cannot be served by a chat backend", field)
    chat: dict[str, Any] = {k: v for k, v in request.items() if k in PASSED}
    chat["messages"] = _system(request.get("system")) + messages(request.get("messages") or [])
    if request.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    stops = request.get("stop_sequences")
    if stops:
        chat["stop"] = stops
    if request.get("tools"):
        chat["tools"] = [tool(t, i) for i, t in enumerate(request["tools"])]
    if request.get("tool_choice") is not None:
        chat.update(tool_choice(request["tool_choice"]))
    _check_context_management(request.get("context_management"))
    effort = reasoning_effort(request.get("thinking"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    user = (request.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        chat["user"] = user
    return chat


def _system(system: Any) -> list[dict[str, Any]]:
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    parts = [_text_part(block, f"system.{i}") for i, block in enumerate(system)]
    return [{"role": "system", "content": parts}]


def messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic turns as chat messages: a user turn's tool results become `tool` messages
    (before its other content, as they answer the turn before); an assistant turn's
    `tool_use` blocks become its `tool_calls`."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(items):
        content = message.get("content") or []
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
        elif message.get("role") == "assistant":
            out.append(_assistant(content, f"messages.{i}.content"))
        else:
            out.extend(_user(content, f"messages.{i}.content"))
    return out


def _assistant(blocks: list[dict[str, Any]], path: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = _encoder.encode(block.get("input") or {}).decode()
            function = {"name": block["name"], "arguments": arguments}
            calls.append({"id": block["id"], "type": "function", "function": function})
        elif kind not in HISTORY_ONLY:
            raise _block(kind, f"{path}.{j}")
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        if block.get("type") == "tool_result":
            results.append(_tool_result(block, f"{path}.{j}"))
        else:
            parts.append(content_part(block, f"{path}.{j}"))
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _tool_result(block: dict[str, Any], path: str) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list):
        text = "".join(_text_part(b, f"{path}.content.{k}")["text"] for k, b in enumerate(content))
    else:
        text = content if isinstance(content, str) else ""
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def content_part(block: dict[str, Any], path: str) -> dict[str, Any]:
    """One content block of a user turn as a chat content part."""
    kind = block.get("type")
    if kind == "text":
        return _text_part(block, path)
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _url(block["source"], path)}}
    if kind == "document":
        return _document(block.get("source") or {}, path)
    raise _block(kind, path)


def _text_part(block: dict[str, Any], path: str) -> dict[str, Any]:
    if block.get("type") != "text":
        raise _block(block.get("type"), path)
    if block.get("citations"):
        raise Unsupported("citations cannot be served by a chat backend", f"{path}.citations")
    return {"type": "text", "text": block["text"]}


def _url(source: dict[str, Any], path: str) -> str:
    """An image source as the URL a chat part carries: base64 as a data: URL."""
    kind = source.get("type")
    if kind == "base64":
        return f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise Unsupported(
        f"image source type {kind!r} cannot be served by a chat backend", f"{path}.source.type"
    )


def _document(source: dict[str, Any], path: str) -> dict[str, Any]:
    """A plain-text document as a text part; a base64 PDF as a chat `file` part."""
    kind = source.get("type")
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if kind == "base64" and source.get("media_type") == "application/pdf":
        data = f"data:application/pdf;base64,{source.get('data', '')}"
        return {"type": "file", "file": {"filename": "document.pdf", "file_data": data}}
    raise Unsupported(
        f"document source type {kind!r} cannot be served by a chat backend", f"{path}.source.type"
    )


def _block(kind: Any, path: str) -> Unsupported:
    return Unsupported(
        f"content blocks of type {kind!r} cannot be served by a chat backend", f"{path}.type"
    )


def tool(spec: dict[str, Any], index: int) -> dict[str, Any]:
    """A client tool as a function tool; Anthropic's server tools have no chat form."""
    if spec.get("type") not in (None, "custom"):
        raise Unsupported(
            f"the server tool {spec.get('type')!r} cannot be served by a chat backend",
            f"tools.{index}.type",
        )
    function: dict[str, Any] = {"name": spec["name"]}
    if spec.get("description"):
        function["description"] = spec["description"]
    function["parameters"] = spec.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """`tool_choice` (and `disable_parallel_tool_use`) as chat fields."""
    kind = choice.get("type")
    chosen: Any
    if kind == "tool":
        chosen = {"type": "function", "function": {"name": choice.get("name", "")}}
    else:
        chosen = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
        if chosen is None:
            raise Unsupported(f"tool_choice type {kind!r} is unknown", "tool_choice.type")
    fields: dict[str, Any] = {"tool_choice": chosen}
    if choice.get("disable_parallel_tool_use"):
        fields["parallel_tool_calls"] = False
    return fields


def _check_context_management(value: Any) -> None:
    """Context edits that clear earlier thinking are already in effect (a chat backend is
    never sent earlier thinking); any other edit has no chat form."""
    if value is None:
        return
    edits = value.get("edits") if isinstance(value, dict) else None
    if not isinstance(edits, list):
        raise Unsupported("context_management must have a list of edits", "context_management")
    for i, edit in enumerate(edits):
        kind = edit.get("type") if isinstance(edit, dict) else None
        if not (isinstance(kind, str) and kind.startswith("clear_thinking_")):
            raise Unsupported(
                f"the context edit {kind!r} cannot be served by a chat backend",
                f"context_management.edits.{i}.type",
            )


def reasoning_effort(thinking: Any) -> str | None:
    """An enabled thinking budget as the nearest `reasoning_effort`; None when disabled, or
    adaptive (the model decides: the backend's own default)."""
    if not isinstance(thinking, dict) or thinking.get("type") in ("disabled", "adaptive"):
        return None
    if thinking.get("type") != "enabled":
        raise Unsupported(
            f"thinking type {thinking.get('type')!r} cannot be served by a chat backend",
            "thinking.type",
        )
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int):
        raise Unsupported("thinking.budget_tokens must be an integer", "thinking.budget_tokens")
    for limit, effort in EFFORTS:
        if budget <= limit:
            return effort
    return "high"
