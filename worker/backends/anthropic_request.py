"""An OpenAI chat request as an Anthropic Messages request.

What maps: system and developer messages become `system` blocks (with their `cache_control`);
content parts keep `cache_control`; tool calls and results become tool_use/tool_result blocks;
`stop` becomes `stop_sequences`; `reasoning_effort` a thinking budget; `response_format`
(json_schema or json_object) a forced tool whose input is the answer; `user` goes into
`metadata.user_id`. Anything else is refused by name (`params.check_fields`). Image URLs are
never fetched here or by Anthropic: a data: URL is sent as base64, any other URL is a 400.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from llmq.schemas.openai import ChatCompletionRequest, Message
from llmq.schemas.text import message_text
from llmq.worker.backends.base import BackendError, Call, unsupported_parameter
from llmq.worker.backends.params import check_fields, top_k

BACKEND: Final = "anthropic"
MAPPED: Final = frozenset(
    {
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
    }
)
THINKING_BUDGETS: Final = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
"""`reasoning_effort` → `thinking.budget_tokens` (Anthropic's minimum is 1024)."""
FORMAT_TOOL: Final = "json_answer"
"""The forced tool that carries a `response_format` answer when the schema has no name."""

_json_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def invalid(message: str, param: str | None = None) -> BackendError:
    return BackendError(message, status=400, type="invalid_request_error", param=param)


def _cache(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    return block


def blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI content (string or parts) as Anthropic content blocks; empty text is dropped."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    out = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                out.append(_cache(part, {"type": "text", "text": part["text"]}))
        elif kind == "image_url":
            out.append(_cache(part, image(part.get("image_url"))))
        else:
            raise invalid(f"the anthropic backend does not support content parts of type {kind!r}")
    return out


def image(source: Any) -> dict[str, Any]:
    """A data: URL as a base64 image; no other URL is fetched (a 400)."""
    url = source.get("url", "") if isinstance(source, dict) else str(source or "")
    head, sep, data = url.partition(",")
    if not (url.startswith("data:") and sep and head.endswith(";base64")):
        raise invalid("images must be base64 data: URLs; a worker fetches no URL", "messages")
    media_type = head[len("data:") :].split(";")[0]
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = _json_decoder.decode(arguments) if isinstance(arguments, str) else arguments
    except msgspec.DecodeError:
        raise invalid("tool call arguments must be a JSON object") from None
    return {
        "type": "tool_use",
        "id": call.get("id", ""),
        "name": function.get("name", ""),
        "input": parsed if isinstance(parsed, dict) else {},
    }


def messages(items: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages): same-role neighbours merged, tool results in user turns."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for message in items:
        if message.role in ("system", "developer"):
            system.extend(blocks(message.content))
            continue
        if message.role in ("tool", "function"):
            role = "user"
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message_text(message),
            }
            found = [result]
        elif message.role == "assistant":
            role = "assistant"
            found = blocks(message.content) + [_tool_use(c) for c in message.tool_calls or ()]
        else:
            role = "user"
            found = blocks(message.content)
        if not found:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(found)
        else:
            out.append({"role": role, "content": found})
    return system, out


def tools(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in items:
        function = tool.get("function") or {}
        converted = {
            "name": function.get("name", ""),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            converted["description"] = function["description"]
        out.append(_cache(tool, converted))
    return out


def tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    converted: dict[str, Any] | None = None
    if choice == "auto":
        converted = {"type": "auto"}
    elif choice == "required":
        converted = {"type": "any"}
    elif choice == "none":
        converted = {"type": "none"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name", "")
        converted = {"type": "tool", "name": name}
    if parallel is False:
        converted = converted or {"type": "auto"}
        if converted["type"] != "none":
            converted["disable_parallel_tool_use"] = True
    return converted


def format_tool(response_format: Any) -> dict[str, Any] | None:
    """`response_format` as a forced tool (its input is the JSON answer); None for text."""
    if not isinstance(response_format, dict) or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"name": FORMAT_TOOL, "input_schema": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        tool = {
            "name": spec.get("name") or FORMAT_TOOL,
            "input_schema": spec.get("schema") or {"type": "object"},
        }
        if spec.get("description"):
            tool["description"] = spec["description"]
        return tool
    raise unsupported_parameter("response_format", BACKEND, f"type {kind!r}")


def thinking(effort: Any, max_tokens: int) -> dict[str, Any] | None:
    if effort is None or effort is msgspec.UNSET or effort == "none":
        return None
    budget = THINKING_BUDGETS.get(str(effort))
    if budget is None:
        raise unsupported_parameter("reasoning_effort", BACKEND, f"unknown effort {effort!r}")
    budget = min(budget, max_tokens - 1)
    if budget < THINKING_BUDGETS["minimal"]:
        raise unsupported_parameter(
            "reasoning_effort", BACKEND, "thinking needs max_tokens above 1024"
        )
    return {"type": "enabled", "budget_tokens": budget}


def build(call: Call, default_max_tokens: int) -> tuple[bytes, str | None]:
    """(the Messages body, the name of the forced response_format tool or None)."""
    check_fields(call, MAPPED, BACKEND)
    request = call.request
    assert isinstance(request, ChatCompletionRequest)
    system, converted = messages(request.messages)
    limit = request.token_limit()
    max_tokens = limit if limit is not None else default_max_tokens
    body: dict[str, Any] = {
        "model": call.upstream_model,
        "max_tokens": max_tokens,
        "messages": converted,
        "stream": True,
    }
    if system:
        body["system"] = system
    if isinstance(request.temperature, float | int):
        body["temperature"] = request.temperature
    if isinstance(request.top_p, float | int):
        body["top_p"] = request.top_p
    wanted_top_k = top_k(call.body)
    if wanted_top_k is not None:
        body["top_k"] = wanted_top_k
    if isinstance(request.stop, str):
        body["stop_sequences"] = [request.stop]
    elif isinstance(request.stop, list) and request.stop:
        body["stop_sequences"] = request.stop
    if request.tools:
        body["tools"] = tools(request.tools)
    choice = tool_choice(request.tool_choice, request.parallel_tool_calls)
    if choice is not None and request.tools:
        body["tool_choice"] = choice
    forced = format_tool(request.response_format)
    if forced is not None:
        if request.tools:
            raise unsupported_parameter(
                "response_format", BACKEND, "structured output cannot be combined with tools"
            )
        body["tools"] = [forced]
        body["tool_choice"] = {"type": "tool", "name": forced["name"]}
    budget = thinking(request.reasoning_effort, max_tokens)
    if budget is not None:
        if forced is not None:
            raise unsupported_parameter(
                "reasoning_effort", BACKEND, "thinking cannot be combined with response_format"
            )
        body["thinking"] = budget
    if isinstance(request.user, str) and request.user:
        body["metadata"] = {"user_id": request.user}
    return _encoder.encode(body), forced["name"] if forced else None
