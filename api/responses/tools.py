"""Built-in tools of a Responses request (web search, file search, MCP …), which a chat
backend cannot run: what the model table's `builtin_tools` says — left out and named in the
`x-llmq-omitted` header (`omit`, the default), refused with a 400 naming the tool
(`reject`), or sent on to a worker whose upstream serves them (`pass`)."""

from __future__ import annotations

from typing import Any

from llmq.api.errors import ApiError

BUILTIN_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer_use_preview",
        "computer_use",
        "computer",
        "local_shell",
        "shell",
        "mcp",
        "apply_patch",
        "tool_search",
    }
)
OMITTED_HEADER = "x-llmq-omitted"


def apply_builtin_policy(fields: dict[str, Any], policy: str, model: str) -> list[tuple[str, str]]:
    """Apply `policy` to the job body's `tools` and `tool_choice`, in place; the omitted
    ones as (param, tool type)."""
    tools = fields.get("tools")
    if policy == "pass" or not isinstance(tools, list):
        return []
    kept, omitted = [], []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in BUILTIN_TOOLS:
            kept.append(tool)
        elif policy == "reject":
            raise _refused(str(kind), model, f"tools[{i}]")
        else:
            omitted.append((f"tools[{i}]", str(kind)))
    choice = fields.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in BUILTIN_TOOLS:
        if policy == "reject":
            raise _refused(str(choice["type"]), model, "tool_choice")
        omitted.append(("tool_choice", str(choice["type"])))
        fields["tool_choice"] = "auto"
    if omitted:
        fields["tools"] = kept
    return omitted


def omitted_header(omitted: list[tuple[str, str]]) -> dict[str, str]:
    """`x-llmq-omitted: tools[0]=web_search, tools[2]=mcp` (nothing when none was)."""
    if not omitted:
        return {}
    return {OMITTED_HEADER: ", ".join(f"{param}={kind}" for param, kind in omitted)}


def _refused(kind: str, model: str, param: str) -> ApiError:
    return ApiError(
        400,
        f"the built-in tool `{kind}` is not supported by model `{model}`",
        "unsupported_parameter",
        param=param,
    )
