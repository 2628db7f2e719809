"""The JavaScript clients against `/v1/messages`: the official `@anthropic-ai/sdk` (npm) for
plain, streamed, tools, thinking, an image, count_tokens and the error classes, on a chat
backend and on an Anthropic pass-through; and Claude Code (`claude -p ... --output-format
json`) completing a prompt that makes it call its `Read` tool, against an llmq model backed
by a fake Anthropic upstream that asks for the tool call and then answers from its result.

Needs node and the packages of tests/js (`make test` runs `npm ci` there); without them
these tests skip, naming the command.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from llmq.api.tenancy import Tenant
from tests.e2e.messages_support import Keyed, keyed_api, serving, tenant_key
from tests.spec.anthropic import assert_count, assert_error, assert_message
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Received,
    Reply,
    anthropic_event,
    json_reply,
    openai_chat,
    openai_chunk,
    openai_error,
    openai_usage,
    sse_data,
)

JS = Path(__file__).resolve().parents[1] / "js"
NODE = shutil.which("node")
CLAUDE = JS / "node_modules" / ".bin" / "claude"
SDK = JS / "node_modules" / "@anthropic-ai" / "sdk"
INSTALL = f"cd {JS} && npm ci"
SECRET = "the-llama-sleeps-at-noon"
RUN_BOUND = 180.0
"""Seconds a node process may take (Claude Code starts slowly on a loaded machine)."""


def needs(path: Path) -> None:
    if NODE is None:
        pytest.skip("node is not installed (apt-get install nodejs npm), then: " + INSTALL)
    if not path.exists():
        pytest.skip(f"the npm packages of tests/js are not installed: {INSTALL}")


async def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = JS) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_BOUND)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, (
        f"exit {proc.returncode}: {out.decode()[:3000]} {err.decode()[-3000:]}"
    )
    return out.decode()


# --- the upstreams: each answers the turn it is asked --------------------------------------


def _tool_results(body: dict[str, Any]) -> list[str]:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return []
    texts = []
    for block in content:
        if block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                inner = "".join(b.get("text", "") for b in inner)
            texts.append(str(inner))
    return texts


def _anthropic_reply(body: dict[str, Any], content: list[dict[str, Any]], stop: str) -> Reply:
    usage = {"input_tokens": 40, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0, "output_tokens": 12}  # fmt: skip
    message = {"id": "msg_01" + unique("x")[2:], "type": "message", "role": "assistant",
               "content": content, "model": body["model"], "stop_reason": stop,
               "stop_sequence": None, "usage": usage}  # fmt: skip
    if not body.get("stream"):
        return json_reply(200, message)
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                              "usage": {**usage, "output_tokens": 1}}},
        {"type": "ping"},
    ]  # fmt: skip
    for index, block in enumerate(content):
        if block["type"] == "tool_use":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {**block, "input": {}}})  # fmt: skip
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        elif block["type"] == "thinking":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "thinking", "thinking": "",
                                             "signature": ""}})  # fmt: skip
            events.append(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "thinking_delta", "thinking": block["thinking"]},
                }
            )
            delta = {"type": "signature_delta", "signature": block["signature"]}
        else:
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "text", "text": ""}})  # fmt: skip
            delta = {"type": "text_delta", "text": block["text"]}
        events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                   "usage": {"output_tokens": 12}})  # fmt: skip
    events.append({"type": "message_stop"})
    return Reply(chunks=[anthropic_event(e) for e in events], content_type="text/event-stream")


def anthropic_turn(note: Path) -> Any:
    """An Anthropic upstream that, offered tools, asks for one (`Read` of `note` for Claude
    Code), then answers from the tool's result; thinks when asked to."""

    def answer(received: Received) -> Reply:
        body = received.json()
        results = _tool_results(body)
        tools = [t["name"] for t in body.get("tools") or ()]
        content: list[dict[str, Any]] = []
        if body.get("thinking", {}).get("type") == "enabled":
            content.append({"type": "thinking", "thinking": "Let me see.",
                            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"})  # fmt: skip
        if results:
            content.append({"type": "text", "text": f"The note says: {' '.join(results)}"})
            return _anthropic_reply(body, content, "end_turn")
        if tools:
            name = "Read" if "Read" in tools else tools[0]
            arguments = {"file_path": str(note)} if name == "Read" else {"city": "Oslo"}
            content.append({"type": "text", "text": "I will look."})
            content.append({"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9",
                            "name": name, "input": arguments})  # fmt: skip
            return _anthropic_reply(body, content, "tool_use")
        content.append({"type": "text", "text": "Hello from the fake upstream."})
        return _anthropic_reply(body, content, "end_turn")

    return answer


def openai_turn(received: Received, note: Path | None = None) -> Reply:
    """A chat upstream that, offered tools, calls one (`Read` of `note` when offered), then
    answers from its result."""
    body = received.json()
    if body["messages"][-1]["role"] == "tool":
        return openai_chat(["The note says: ", body["messages"][-1]["content"]])
    if body.get("tools"):
        names = [t["function"]["name"] for t in body["tools"]]
        name, arguments = names[0], {"city": "Oslo"}
        if "Read" in names and note is not None:
            name, arguments = "Read", {"file_path": str(note)}
        call = {"index": 0, "id": "call_7", "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)}}  # fmt: skip
        chunks = [openai_chunk({"role": "assistant", "content": None}),
                  openai_chunk({"tool_calls": [call]}), openai_chunk({}, "tool_calls"),
                  openai_chunk(usage=openai_usage(20, 5), empty=True)]  # fmt: skip
        return Reply(chunks=sse_data(chunks), content_type="text/event-stream")
    if body.get("reasoning_effort"):
        chunks = [
            openai_chunk({"reasoning_content": "Thinking."}),
            openai_chunk({"content": "Hi"}),
            openai_chunk({}, "stop"),
            openai_chunk(usage=openai_usage(9, 3), empty=True),
        ]
        return Reply(chunks=sse_data(chunks), content_type="text/event-stream")
    return openai_chat(["Hello ", "from chat."])


# --- the tests --------------------------------------------------------------------------------


async def _tenant_for(stack: Any, redis_url: str, *models: str) -> Keyed:
    tenant = Tenant(name=unique("t"), rpm=10_000, models=list(models))
    return await keyed_api(stack, redis_url, tenant, max_body_bytes=200_000)


def _judge(seen: dict[str, Any]) -> None:
    for name in ("plain", "thinking", "image"):
        assert_message(seen[name])
    assert_message(seen["streamed"]["final"])
    assert "".join(seen["streamed"]["texts"]) == seen["streamed"]["final"]["content"][0]["text"]
    call, answer = seen["tools"]["call"], seen["tools"]["answer"]
    assert_message(call)
    assert call["stop_reason"] == "tool_use"
    assert any(b["type"] == "tool_use" and b["input"] == {"city": "Oslo"} for b in call["content"])
    assert assert_message(answer).stop_reason == "end_turn"
    assert seen["thinking"]["content"][0]["type"] == "thinking"
    assert_count(seen["count"])
    expected = {
        "bad_request": ("BadRequestError", 400), "authentication": ("AuthenticationError", 401),
        "permission": ("PermissionDeniedError", 403), "not_found": ("NotFoundError", 404),
        "content_too_large": ("ContentTooLargeError", 413),
        "rate_limit": ("RateLimitError", 429), "internal_server": ("InternalServerError", 500),
        "overloaded": ("OverloadedError", 529),
    }  # fmt: skip
    assert set(seen["errors"]) == set(expected)
    for name, (cls, status) in expected.items():
        got = seen["errors"][name]
        assert (got["class"], got["status"]) == (cls, status), got
        assert_error(got["body"])
        assert got["requestId"], got
        if status in (429, 529):
            assert int(got["retryAfter"]) >= 1, got


async def test_js_sdk_on_a_chat_backend_and_through_to_anthropic(  # type: ignore[no-untyped-def]
    stack, redis_server, upstream: FakeUpstream, tmp_path: Path
) -> None:
    needs(SDK)
    assert NODE is not None
    chat, claude, forbidden = unique("gpt"), unique("claude"), unique("no")
    gone, broken = unique("gone"), unique("broken")
    keyed = await _tenant_for(stack, redis_server.url, chat, claude, gone, broken)
    upstream.respond("/v1/chat/completions", lambda received: openai_turn(received))
    upstream.route("/broken/v1/chat/completions", openai_error(500, "down", "server_error"))
    upstream.respond("/v1/messages", anthropic_turn(tmp_path / "unused"))
    upstream.route("/v1/messages/count_tokens", json_reply(200, {"input_tokens": 17}))
    await stack.worker(model=[chat], backend="openai", backend_url=f"{upstream.url}/v1")
    await stack.worker(model=[claude], backend="anthropic", backend_url=upstream.url)
    await stack.worker(model=[forbidden])
    await stack.worker(model=[broken], backend="openai", backend_url=f"{upstream.url}/broken/v1",
                       breaker_threshold=100)  # fmt: skip
    departed = await stack.worker(model=[gone])
    for model in (chat, claude, forbidden, broken, gone):
        await serving(keyed, model)
    await departed.close()
    stack.workers.remove(departed)
    await wait_for(lambda: not keyed.api.runtime.registry.workers_for(gone))
    for model in (chat, claude):
        limited = await tenant_key(redis_server.url, Tenant(name=unique("t"), rpm=1))
        args = [keyed.url, keyed.key, model, forbidden, gone, broken, limited]
        _judge(json.loads(await run([NODE, "sdk_check.mjs", *args])))


@pytest.mark.parametrize("backend", ["anthropic", "openai"])
async def test_claude_code_calls_a_tool_through_llmq(  # type: ignore[no-untyped-def]
    stack, redis_server, upstream: FakeUpstream, tmp_path: Path, backend: str
) -> None:
    """Through to an Anthropic upstream, and translated for a chat upstream."""
    needs(CLAUDE)
    model = unique("claude" if backend == "anthropic" else "qwen")
    keyed = await _tenant_for(stack, redis_server.url, model)
    workdir = tmp_path / "project"
    workdir.mkdir()
    note = workdir / "note.txt"
    note.write_text(f"{SECRET}\n")
    upstream.respond("/v1/messages", anthropic_turn(note))
    upstream.respond("/v1/chat/completions", lambda received: openai_turn(received, note))
    upstream.route("/v1/messages/count_tokens", json_reply(200, {"input_tokens": 100}))
    url = upstream.url if backend == "anthropic" else f"{upstream.url}/v1"
    await stack.worker(model=[model], backend=backend, backend_url=url)
    await serving(keyed, model)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
        "ANTHROPIC_BASE_URL": keyed.url, "ANTHROPIC_API_KEY": keyed.key,
        "ANTHROPIC_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
    }  # fmt: skip
    prompt = f"Read the file {note} and tell me what it says."
    out = await run(
        [str(CLAUDE), "-p", prompt, "--output-format", "json", "--model", model],
        env=env, cwd=workdir,
    )  # fmt: skip
    result = json.loads(out)
    assert result.get("is_error") is False, result
    assert SECRET in result["result"], result  # read by Claude Code's tool, answered upstream
    if backend == "anthropic":
        asked = [r for r in upstream.received if r.path == "/v1/messages"]
        assert asked and all(r.headers.get("x-api-key") != keyed.key for r in asked)
        assert {r.headers.get("anthropic-version") for r in asked} == {"2023-06-01"}
        answered = [r.json() for r in asked if _tool_results(r.json())]
        assert answered and SECRET in " ".join(_tool_results(answered[-1]))
    else:
        asked = [r.json() for r in upstream.received if r.path == "/v1/chat/completions"]
        assert any(b.get("tools") for b in asked)
        assert SECRET in asked[-1]["messages"][-1]["content"]  # the tool's result, translated
    entries = await keyed.ledger()
    assert entries and all(e.model == model and e.status == "ok" for e in entries)
