"""Responses tools a chat backend cannot run: `namespace` tools flattened for the backend
and their calls mapped back; built-in tools per the model table's `builtin_tools` (omit:
named in `x-llmq-omitted` and counted; reject: 400 naming the tool); `include`,
`client_metadata`, `prompt_cache_key` and `store: false` with stateless multi-turn input
(reasoning items sent back inline) accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.spec import assert_valid
from tests.spec import open_responses as open_spec
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import Reply, openai_chat, openai_chunk, sse_data

CHAT = "/v1/chat/completions"
CRM = {
    "type": "namespace",
    "name": "crm",
    "description": "customer records",
    "tools": [
        {"type": "function", "name": "get_customer", "description": "one customer",
         "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}},
    ],
}  # fmt: skip


def namespaced_call() -> Reply:
    call = {"index": 0, "id": "call_7", "type": "function"}
    chunks = [
        openai_chunk({"role": "assistant", "content": None}),
        openai_chunk({"tool_calls": [{**call, "function": {"name": "crm__get_"}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"name": "customer",
                                                                "arguments": '{"id":"42"}'}}]}),
        openai_chunk({}, "tool_calls"),
    ]  # fmt: skip
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


@pytest.fixture
async def served(stack, upstream, tmp_path: Path):  # type: ignore[no-untyped-def]
    strict, loose = unique("strict"), unique("loose")
    table = tmp_path / "models.toml"
    table.write_text(f'[models."{strict}"]\nbuiltin_tools = "reject"\n')
    api = await stack.api(models_file=str(table))
    worker = await stack.worker(
        model=[strict, loose], backend="openai", backend_url=f"{upstream.url}/v1"
    )
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(loose)})
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        yield strict, loose, http, api


async def test_namespace_tools_are_flattened_and_mapped_back(served, upstream) -> None:  # type: ignore[no-untyped-def]
    _strict, model, _http, api = served
    upstream.route(CHAT, namespaced_call())
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0)
    stream = await client.responses.create(
        model=model, input="who is 42?", tools=[CRM], stream=True
    )  # type: ignore[list-item]
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    for event in events:
        assert_valid("ResponseStreamEvent", event)
    sent = upstream.last.json()["tools"]
    assert sent == [{"type": "function", "function": {
        "name": "crm__get_customer", "description": "customer records — one customer",
        "parameters": CRM["tools"][0]["parameters"]}}]  # type: ignore[index]  # fmt: skip
    done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert (done["namespace"], done["name"], done["call_id"]) == ("crm", "get_customer", "call_7")
    final = events[-1]["response"]["output"][0]
    assert (final["namespace"], final["name"]) == ("crm", "get_customer")
    # the call sent back reaches the backend flattened again
    upstream.route(CHAT, openai_chat(["Ada"]))
    await client.responses.create(
        model=model, tools=[CRM], previous_response_id=events[-1]["response"]["id"],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": "call_7", "output": "Ada"}],
    )  # fmt: skip
    calls = upstream.last.json()["messages"][1]["tool_calls"]
    assert calls[0]["function"]["name"] == "crm__get_customer"
    await client.close()


async def test_builtin_tools_are_omitted_by_default_and_named(served, upstream) -> None:  # type: ignore[no-untyped-def]
    _strict, model, http, _api = served
    upstream.route(CHAT, openai_chat(["ok"]))
    fn = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    body = {"model": model, "input": "x",
            "tools": [{"type": "web_search"}, fn, {"type": "mcp", "server_label": "s"}],
            "tool_choice": {"type": "web_search"}}  # fmt: skip
    resp = await http.post("/v1/responses", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-llmq-omitted"] == (
        "tools[0]=web_search, tools[2]=mcp, tool_choice=web_search"
    )
    sent = upstream.last.json()
    assert [t["function"]["name"] for t in sent["tools"]] == ["f"]
    assert sent["tool_choice"] == "auto"
    assert [t["type"] for t in resp.json()["tools"]] == ["function"]
    open_spec.assert_response(resp.json())
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as s:
        assert s.headers["x-llmq-omitted"].startswith("tools[0]=web_search")
        await s.aread()
    metrics = (await http.get("/metrics")).text
    line = next(x for x in metrics.splitlines() if x.startswith("llmq_api_omitted_tools_total")
                and f'model="{model}"' in x and 'tool="web_search"' in x)  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) == 4  # tools and tool_choice, twice
    plain = await http.post("/v1/responses", json={"model": model, "input": "x"})
    assert "x-llmq-omitted" not in plain.headers


async def test_builtin_tools_rejected_where_the_table_says_so(served, upstream) -> None:  # type: ignore[no-untyped-def]
    strict, _model, http, _api = served
    asked = len(upstream.received)
    fn = {"type": "function", "name": "f"}
    resp = await http.post("/v1/responses", json={
        "model": strict, "input": "x", "tools": [fn, {"type": "file_search"}]})  # fmt: skip
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "tools[1]" and "file_search" in resp.text
    assert len(upstream.received) == asked


async def test_stateless_multi_turn_with_include_and_cache_keys(served, upstream) -> None:  # type: ignore[no-untyped-def]
    _strict, model, http, _api = served
    reasoning_reply = Reply(chunks=sse_data([
        openai_chunk({"reasoning_content": "think"}), openai_chunk({"content": "one"}),
        openai_chunk({}, "stop")]), content_type="text/event-stream")  # fmt: skip
    upstream.route(CHAT, reasoning_reply)
    extra: dict[str, Any] = {
        "store": False, "include": ["reasoning.encrypted_content"],
        "client_metadata": {"session": "s1"}, "prompt_cache_key": "conv-1",
    }  # fmt: skip
    first = await http.post("/v1/responses", json={"model": model, "input": "q1", **extra})
    assert first.status_code == 200, first.text
    output = first.json()["output"]
    assert [o["type"] for o in output] == ["reasoning", "message"]
    assert (await http.get(f"/v1/responses/{first.json()['id']}")).status_code == 404
    upstream.route(CHAT, openai_chat(["two"]))
    turn2 = [{"role": "user", "content": "q1"}, *output, {"role": "user", "content": "q2"}]
    second = await http.post("/v1/responses", json={"model": model, "input": turn2, **extra})
    assert second.status_code == 200, second.text
    sent = upstream.last.json()
    assert sent["prompt_cache_key"] == "conv-1" and "client_metadata" not in sent
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert json.dumps(sent).count("think") == 0  # a chat model does not take its reasoning back
