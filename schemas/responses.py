"""The Responses API on the wire: the request llmq reads, and the records it stores.

`ResponseRequest` reads only what llmq acts on; the job body keeps every other field as the
client sent it (msgspec ignores unknown fields), so an upstream that serves `/v1/responses`
gets them untouched. `StoredResponse` and `Conversation` are the JetStream records of
stored responses and conversations (`api/responses/conversation_store.py`).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec import UNSET, Struct, UnsetType

RESPONSE_PREFIX: Final = "resp_"
CONVERSATION_PREFIX: Final = "conv_"

Json = dict[str, Any]
Item = dict[str, Any]
"""One Responses item (message, function_call, function_call_output, reasoning …) as JSON."""


class ResponseRequest(Struct, omit_defaults=True):
    """`POST /v1/responses`; fields llmq does not act on travel in the body untouched."""

    model: str
    input: str | list[Item] | UnsetType = UNSET
    instructions: str | UnsetType | None = UNSET
    tools: list[dict[str, Any]] | UnsetType = UNSET
    tool_choice: str | dict[str, Any] | UnsetType = UNSET
    text: dict[str, Any] | UnsetType | None = UNSET
    reasoning: dict[str, Any] | UnsetType | None = UNSET
    max_output_tokens: int | UnsetType | None = UNSET
    temperature: float | UnsetType | None = UNSET
    top_p: float | UnsetType | None = UNSET
    metadata: dict[str, str] | UnsetType | None = UNSET
    store: bool | UnsetType | None = UNSET
    previous_response_id: str | UnsetType | None = UNSET
    conversation: str | dict[str, Any] | UnsetType | None = UNSET
    stream: bool = False
    background: bool | UnsetType | None = UNSET

    @property
    def stores(self) -> bool:
        """`store` defaults to true, as OpenAI's does."""
        return self.store is not False

    @property
    def in_background(self) -> bool:
        return self.background is True

    @property
    def conversation_id(self) -> str | None:
        value = self.conversation
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return str(value["id"])
        return None

    @property
    def previous_id(self) -> str | None:
        return self.previous_response_id if isinstance(self.previous_response_id, str) else None


response_request_decoder: Final = msgspec.json.Decoder(ResponseRequest)


class StoredResponse(Struct, kw_only=True, omit_defaults=True):
    """One stored response: the Response object and what it was made from."""

    id: str
    """32 hex; the job id. Public id `resp_<id>`."""
    tenant: str
    created_at: float
    response: dict[str, Any]
    """The Response object as the client sees it (status queued/in_progress while a
    background response runs)."""
    input_items: list[Item] = msgspec.field(default_factory=list)
    """This request's own input items, with ids (`GET …/input_items`)."""
    context: list[Item] = msgspec.field(default_factory=list)
    """Every item the model saw before this response's output: the history it was built
    from (previous responses or the conversation) and its input."""
    background: bool = False
    conversation: str | None = None
    """The conversation id whose items this response appends (once it ends)."""
    appended: bool = False
    """Its items were appended to the conversation (a background response appends once)."""


stored_response_decoder: Final = msgspec.json.Decoder(StoredResponse)


class Conversation(Struct, kw_only=True, omit_defaults=True):
    """One conversation with all of its items, in order."""

    id: str
    """32 hex. Public id `conv_<id>`."""
    tenant: str
    created_at: int
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    items: list[Item] = msgspec.field(default_factory=list)


conversation_decoder: Final = msgspec.json.Decoder(Conversation)


def skeleton(request: Json, response_id: str, created_at: int) -> Json:
    """The Response object of `request` before any output (status `in_progress`)."""
    reasoning = request.get("reasoning")
    conversation = request.get("conversation")
    if isinstance(conversation, str):
        conversation = {"id": conversation}
    text = request.get("text") if isinstance(request.get("text"), dict) else None
    response: Json = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": bool(request.get("background")),
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request["model"],
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
        if isinstance(reasoning, dict)
        else None,
        "store": request.get("store", True) is not False,
        "temperature": request.get("temperature", 1.0),
        "text": text or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": [_tool_view(t) for t in request.get("tools") or []],
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation") or "disabled",
        "metadata": request.get("metadata") or {},
        "presence_penalty": _number(request.get("presence_penalty"), 0.0),
        "frequency_penalty": _number(request.get("frequency_penalty"), 0.0),
        "top_logprobs": request.get("top_logprobs")
        if isinstance(request.get("top_logprobs"), int)
        else 0,
        "max_tool_calls": request.get("max_tool_calls"),
        "service_tier": request.get("service_tier") or "auto",
        "safety_identifier": request.get("safety_identifier"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "usage": usage_of(None),
    }
    if isinstance(conversation, dict):
        response["conversation"] = {"id": conversation.get("id", "")}
    if isinstance(request.get("user"), str):
        response["user"] = request["user"]
    return response


def _number(value: Any, default: float) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else default


def usage_of(usage: Json | None) -> Json:
    """Chat usage (`prompt_tokens` …) as Responses usage (`input_tokens` … with details)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def _tool_view(tool: Json) -> Json:
    """A tool as the Response echoes it: a function tool always says `strict`,
    `parameters` and `description` (null when the request left them out)."""
    if tool.get("type") == "function":
        return {"strict": None, "parameters": None, "description": None, **tool}
    return tool
