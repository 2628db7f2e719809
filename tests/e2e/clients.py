"""What the client matrix shares (tests/e2e/test_clients_*.py): a chat upstream that answers
like a real model — it calls tools when given them, answers a tool's result, writes JSON
when asked for it, hands off to another agent, and reasons before it speaks — and the
stack serving one model on it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    json_reply,
    openai_chunk,
    openai_usage,
    sse_data,
)

CHAT = "/v1/chat/completions"
WEATHER = {"city": "Oslo", "temperature": 21}
REASONING = "The user greets me; I should greet back."
GREETING = "Hello from llmq."
SUNNY = "It is sunny in Oslo."
BONJOUR = "Bonjour ! Je parle français."


def _reply(deltas: list[dict[str, Any]], finish: str) -> Reply:
    chunks = [openai_chunk({"role": "assistant", "content": ""})]
    chunks += [openai_chunk(d) for d in deltas]
    chunks += [openai_chunk({}, finish), openai_chunk(usage=openai_usage(17, 9), empty=True)]
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


def _call(name: str, arguments: dict[str, Any]) -> Reply:
    call = {"index": 0, "id": f"call_{name[:20]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}  # fmt: skip
    return _reply([{"tool_calls": [call]}], "tool_calls")


def answer(body: dict[str, Any]) -> Reply:
    """What the model says to one chat request."""
    messages = body.get("messages") or []
    tools = [t["function"]["name"] for t in body.get("tools") or [] if "function" in t]
    system = " ".join(
        str(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    if "French" in system:
        return _reply([{"content": BONJOUR}], "stop")
    if messages and messages[-1].get("role") == "tool":
        return _reply([{"content": SUNNY}], "stop")
    handoff = next((t for t in tools if t.startswith("transfer_to_")), None)
    if handoff is not None and "French" in json.dumps(messages):
        return _call(handoff, {})
    if "final_result" in tools:  # pydantic-ai's structured output tool
        return _call("final_result", WEATHER)
    if "get_weather" in tools:
        return _call("get_weather", {"city": "Oslo"})
    if body.get("response_format", {}).get("type") in ("json_schema", "json_object"):
        return _reply([{"content": json.dumps(WEATHER)}], "stop")
    return _reply([{"reasoning_content": REASONING}, {"content": GREETING}], "stop")


class _Answers(dict[str, Reply]):
    def __init__(self, server: FakeUpstream) -> None:
        super().__init__()
        self.server = server

    def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        if path == CHAT:
            return answer(self.server.received[-1].json())
        return super().get(path, default)


@dataclass
class Served:
    url: str
    model: str
    upstream: FakeUpstream

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.upstream.received if r.path == CHAT]


@pytest.fixture
async def served(stack) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    async with FakeUpstream() as upstream:
        upstream.routes = _Answers(upstream)
        upstream.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        model = unique("gpt-matrix")
        api = await stack.api()
        worker = await stack.worker(
            model=[model], backend="openai", backend_url=f"{upstream.url}/v1", capacity=8
        )
        await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
        yield Served(api.url, model, upstream)
