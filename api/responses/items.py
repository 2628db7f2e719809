"""Responses API items as llmq stores and lists them: ids for input items, the history a
request is built from, the form sent to a worker, and OpenAI's paged item lists.

Pure; shared by the response and conversation serving modules.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

from llmq.api.errors import ApiError
from llmq.schemas.responses import Item

_TEXT_PART = {"assistant": "output_text"}
_ID_PREFIX = {
    "message": "msg_",
    "function_call": "fc_",
    "function_call_output": "fco_",
    "reasoning": "rs_",
}
MAX_ITEMS = 1000
"""Most items one request or one conversation call may add."""


def item_id(kind: str) -> str:
    return f"{_ID_PREFIX.get(kind, 'item_')}{secrets.token_hex(16)}"


def as_items(
    raw: str | list[Item] | None, param: str = "input", references: bool = False
) -> list[Item]:
    """A request's input (or a conversation's new items) as complete items with ids;
    `item_reference` items are kept for `references.resolve` when `references` allows."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    if len(raw) > MAX_ITEMS:
        raise ApiError(400, f"at most {MAX_ITEMS} items", "invalid_request", param=param)
    return [_complete(item, f"{param}[{i}]", references) for i, item in enumerate(raw)]


def _complete(raw: Any, param: str, references: bool) -> Item:
    if not isinstance(raw, dict):
        raise ApiError(400, "an item must be an object", "invalid_request", param=param)
    item = copy.deepcopy(raw)
    kind = item.get("type") or ("message" if "role" in item else None)
    if not isinstance(kind, str):
        raise ApiError(400, "an item needs a `type`", "invalid_request", param=param)
    item["type"] = kind
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise ApiError(400, "a message needs a valid `role`", "invalid_request", param=param)
        content = item.get("content")
        if isinstance(content, str):
            part = _TEXT_PART.get(role, "input_text")
            item["content"] = [{"type": part, "text": content}]
            if part == "output_text":
                item["content"][0] |= {"annotations": [], "logprobs": []}
        elif not isinstance(content, list):
            raise ApiError(
                400, "`content` must be a string or a list", "invalid_request", param=param
            )
        else:
            for part in content:  # a stored image says its detail, as OpenAI's items do
                if isinstance(part, dict) and part.get("type") == "input_image":
                    part.setdefault("detail", "auto")
    if kind == "item_reference":
        if not references:
            raise ApiError(
                400, "item references are not supported here", "unsupported_parameter", param=param
            )
        if not isinstance(item.get("id"), str):
            raise ApiError(400, "an item reference needs an `id`", "invalid_request", param=param)
        return item
    item.setdefault("id", item_id(kind))
    if kind in ("message", "function_call", "function_call_output"):
        item.setdefault("status", "completed")
    return item


def for_model(items: list[Item]) -> list[Item]:
    """Items as a worker's input: without llmq's ids and statuses."""
    return [{k: v for k, v in item.items() if k not in ("id", "status")} for item in items]


def page(items: list[Item], limit: int, order: str, after: str | None) -> tuple[list[Item], bool]:
    """One page of `items` (kept oldest first) in `order`, after the item id `after`."""
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be `asc` or `desc`", "invalid_request", param="order")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        start = next((i + 1 for i, it in enumerate(ordered) if it.get("id") == after), len(ordered))
    limit = max(1, min(limit, 100))
    return ordered[start : start + limit], start + limit < len(ordered)


def list_body(data: list[Item], has_more: bool) -> dict[str, Any]:
    """OpenAI's item list (first/last ids are strings, left out for an empty page)."""
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if data:
        body["first_id"], body["last_id"] = data[0]["id"], data[-1]["id"]
    return body
