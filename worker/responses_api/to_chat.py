"""A Responses request as a chat-completions request, for backends that speak only chat.

Pure: JSON in, JSON out, no backend internals. What chat cannot express (built-in tools,
prompt templates, file inputs, item references) is refused with `Unsupported`, never dropped.
The api has already expanded `previous_response_id` / `conversation` into `input`.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

_PASSED = ("temperature", "top_p", "parallel_tool_calls", "user", "seed", "service_tier")
_REFUSED = ("prompt",)


class Unsupported(ValueError):
    """A request field or item this translation cannot honour; `param` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def chat_request(request: Json) -> Json:
    """The chat request equivalent to the Responses `request`."""
    for name in _REFUSED:
        if request.get(name) is not None:
            raise Unsupported(f"`{name}` is not supported by a chat backend", name)
    chat: Json = {"model": request["model"], "messages": messages(request)}
    for name in _PASSED:
        if request.get(name) is not None:
            chat[name] = request[name]
    if isinstance(request.get("max_output_tokens"), int):
        chat["max_completion_tokens"] = request["max_output_tokens"]
    if request.get("tools"):
        chat["tools"] = [_tool(t, i) for i, t in enumerate(request["tools"])]
    if request.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(request["tool_choice"])
    response_format = _response_format(request.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    reasoning = request.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]
    if isinstance(request.get("top_logprobs"), int):
        chat["logprobs"], chat["top_logprobs"] = True, request["top_logprobs"]
    if request.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


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
        call = {
            "id": item.get("call_id") or item.get("id") or "",
            "type": "function",
            "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")},
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


def _tool(tool: Json, index: int) -> Json:
    if tool.get("type") != "function":
        raise Unsupported(
            f"tools of type `{tool.get('type')}` are not supported by a chat backend",
            f"tools[{index}]",
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


def _response_format(text: Json | None) -> Json | None:
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        keys = ("name", "schema", "strict", "description")
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in keys if k in fmt}}
    raise Unsupported(f"text.format `{fmt['type']}` is not supported", "text.format")
