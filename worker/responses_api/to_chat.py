"""A Responses request as a chat-completions request, for backends that speak only chat.

Pure: JSON in, JSON out, no backend internals. What chat cannot express (built-in tools,
prompt templates, `truncation: auto`) is refused with `Unsupported`, never dropped; what it
does not know is passed through to the chat body.
The api has already expanded `previous_response_id` / `conversation` into `input`.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

_PASSED = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "seed",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
)
"""Responses fields that chat spells the same way: copied."""
_MAPPED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "max_output_tokens",
        "top_logprobs",
        "stream",
        "include",
    }
)
"""Responses fields the translation turns into their chat form (or acts on itself)."""
LLMQ_ONLY = frozenset(
    {
        "store",
        "previous_response_id",
        "conversation",
        "background",
        "metadata",
        "stream_options",
        "client_metadata",
    }
)
"""Fields the api or the Response object honours; the chat upstream never needs them."""
_REFUSED = {
    "prompt": "prompt templates live on OpenAI's servers",
    "context_management": "server-side compaction needs OpenAI's store",
    "moderation": "OpenAI's moderation of a response",
}
_TEXT_KEYS = frozenset({"format", "verbosity"})
_REASONING_KEYS = frozenset({"effort", "summary", "generate_summary"})


class Unsupported(ValueError):
    """A request field or item this translation cannot honour; `param` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def chat_request(request: Json) -> Json:
    """The chat request equivalent to the Responses `request`: every field is mapped,
    copied, passed through untouched (fields it does not know: vendor parameters such as
    vLLM's `top_k`), or refused (`Unsupported`) — none is dropped."""
    _refuse(request)
    chat: Json = {"model": request["model"], "messages": messages(request)}
    for name in _PASSED:
        if request.get(name) is not None:
            chat[name] = request[name]
    if isinstance(request.get("max_output_tokens"), int):
        chat["max_completion_tokens"] = request["max_output_tokens"]
    if request.get("tools"):
        chat["tools"] = [c for i, t in enumerate(request["tools"]) for c in _tools(t, i)]
    if request.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(request["tool_choice"])
    _text(request.get("text"), chat)
    _reasoning(request.get("reasoning"), chat)
    if isinstance(request.get("top_logprobs"), int):
        chat["logprobs"], chat["top_logprobs"] = True, request["top_logprobs"]
    if "message.output_text.logprobs" in (request.get("include") or ()):
        chat["logprobs"] = True
    if request.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    known = _MAPPED | LLMQ_ONLY | set(_PASSED)
    for name, value in request.items():
        if name in known:
            continue
        if name in chat:  # a chat field the translation makes: the client's would be lost
            raise Unsupported(f"`{name}` is a chat field; use its Responses form", name)
        chat[name] = value
    return chat


def _refuse(request: Json) -> None:
    for name, why in _REFUSED.items():
        if request.get(name) is not None:
            raise Unsupported(f"`{name}` is not supported by a chat backend ({why})", name)
    if request.get("truncation") not in (None, "disabled"):
        raise Unsupported(
            "`truncation: auto` is not supported by a chat backend; the backend's context "
            "limit answers instead",
            "truncation",
        )


def _text(text: Json | None, chat: Json) -> None:
    if not isinstance(text, dict):
        return
    for key in text.keys() - _TEXT_KEYS:
        raise Unsupported(f"`text.{key}` is not supported by a chat backend", f"text.{key}")
    response_format = _response_format(text)
    if response_format is not None:
        chat["response_format"] = response_format
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]


def _reasoning(reasoning: Json | None, chat: Json) -> None:
    """`effort` becomes `reasoning_effort`; a `summary` is honoured by the event fold
    (summary parts), so the upstream needs nothing more."""
    if not isinstance(reasoning, dict):
        return
    for key in reasoning.keys() - _REASONING_KEYS:
        raise Unsupported(
            f"`reasoning.{key}` is not supported by a chat backend", f"reasoning.{key}"
        )
    if reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]


def messages(request: Json) -> list[Json]:
    out: list[Json] = []
    if isinstance(request.get("instructions"), str) and request["instructions"]:
        out.append({"role": "system", "content": request["instructions"]})
    raw = request.get("input")
    if isinstance(raw, str):
        out.append({"role": "user", "content": raw})
        return out
    for i, item in enumerate(raw or []):
        _add_item(out, item, f"input[{i}]")
    return out


def _add_item(out: list[Json], item: Json, param: str) -> None:
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        out.append(_message(item, param))
    elif kind == "function_call":
        name = item.get("name", "")
        if isinstance(item.get("namespace"), str):
            name = flat_name(item["namespace"], name)
        call = {
            "id": item.get("call_id") or item.get("id") or "",
            "type": "function",
            "function": {"name": name, "arguments": item.get("arguments", "")},
        }
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        else:
            out.append({"role": "assistant", "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output", "")
        text = output if isinstance(output, str) else _text_of(output, param)
        out.append({"role": "tool", "tool_call_id": item.get("call_id", ""), "content": text})
    elif kind == "reasoning":
        return  # a chat model does not take its earlier reasoning back
    else:
        raise Unsupported(
            f"input items of type `{kind}` are not supported by a chat backend", param
        )


def _message(item: Json, param: str) -> Json:
    role = item.get("role", "user")
    content = item.get("content", "")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if role != "user":
        return {"role": role, "content": _text_of(content, param)}
    return {"role": role, "content": [_user_part(p, f"{param}.content") for p in content]}


def _user_part(part: Json, param: str) -> Json:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image" and part.get("image_url"):
        image: Json = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        keys = ("file_id", "file_data", "filename", "file_url")
        return {"type": "file", "file": {k: part[k] for k in keys if part.get(k) is not None}}
    raise Unsupported(f"content parts of type `{kind}` are not supported by a chat backend", param)


def _text_of(parts: list[Json], param: str) -> str:
    texts = []
    for part in parts:
        if part.get("type") in ("input_text", "output_text", "text"):
            texts.append(part.get("text", ""))
        elif part.get("type") == "refusal":
            texts.append(part.get("refusal", ""))
        else:
            raise Unsupported(f"`{part.get('type')}` parts are only supported in user input", param)
    return "".join(texts)


NAMESPACE_SEPARATOR = "__"
"""A namespace's function `get` of namespace `crm` is the chat function `crm__get`."""


def flat_name(namespace: str, name: str) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}"


def namespaces(request: Json) -> dict[str, tuple[str, str]]:
    """Chat function name → (namespace, name) for every function of a `namespace` tool, so
    the calls the backend makes are mapped back to the namespace form."""
    out = {}
    for tool in request.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            for inner in tool.get("tools") or ():
                if isinstance(inner, dict) and isinstance(inner.get("name"), str):
                    out[flat_name(tool["name"], inner["name"])] = (tool["name"], inner["name"])
    return out


def _tools(tool: Json, index: int) -> list[Json]:
    """One Responses tool as chat tools: a `namespace` is flattened to its functions."""
    if tool.get("type") != "namespace":
        return [_tool(tool, index)]
    out = []
    for j, inner in enumerate(tool.get("tools") or ()):
        chat = _tool(inner, index, f"tools[{index}].tools[{j}]")
        function = chat["function"]
        function["name"] = flat_name(str(tool.get("name", "")), function.get("name", ""))
        about = [str(d) for d in (tool.get("description"), function.get("description")) if d]
        if about:
            function["description"] = " — ".join(about)
        out.append(chat)
    return out


def _tool(tool: Json, index: int, param: str | None = None) -> Json:
    if tool.get("type") != "function":
        raise Unsupported(
            f"tools of type `{tool.get('type')}` are not supported by a chat backend",
            param or f"tools[{index}]",
        )
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    return {"type": "function", "function": function}


def _tool_choice(choice: str | Json) -> str | Json:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    raise Unsupported(
        f"tool_choice of type `{choice.get('type')}` is not supported by a chat backend",
        "tool_choice",
    )


def _response_format(text: Json) -> Json | None:
    fmt = text.get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        keys = ("name", "schema", "strict", "description")
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in keys if k in fmt}}
    raise Unsupported(f"text.format `{fmt['type']}` is not supported", "text.format")
