"""Open Responses conformance: every Response object and streaming event llmq sends — text,
tool calls, reasoning (as text and as summaries), incomplete, failed, stored and retrieved —
validates against the Open Responses OpenAPI document (from the `openresponses-py`
package) and against OpenAI's; `input_file` parts reach a chat upstream as `file` parts,
a `file_id` resolved from the tenant's files."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from tests.spec import assert_valid
from tests.spec import open_responses as open_spec
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import Reply, openai_chat, openai_chunk, sse_data

CHAT = "/v1/chat/completions"
TOOL = {"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip


def both_response(body: dict[str, Any]) -> None:
    open_spec.assert_response(body)
    assert_valid("Response", body)


def both_event(event: dict[str, Any]) -> None:
    open_spec.assert_event(event)
    assert_valid("ResponseStreamEvent", event)


def chunks_reply(deltas: list[dict[str, Any]], finish: str = "stop") -> Reply:
    chunks = [openai_chunk({"role": "assistant", "content": ""})]
    chunks += [openai_chunk(d) for d in deltas]
    chunks.append(openai_chunk({}, finish))
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


SCENARIOS: dict[str, tuple[Reply, dict[str, Any]]] = {
    "text": (openai_chat(["Hello ", "world"]), {}),
    "tool call": (
        chunks_reply(
            [
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":'},
                        }
                    ]
                },
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
            ],
            "tool_calls",
        ),
        {"tools": [TOOL]},
    ),
    "reasoning text": (
        chunks_reply([{"reasoning_content": "hmm"}, {"content": "42"}]),
        {"reasoning": {"effort": "low"}},
    ),
    "reasoning summary": (
        chunks_reply([{"reasoning_content": "hmm"}, {"content": "42"}]),
        {"reasoning": {"effort": "low", "summary": "detailed"}},
    ),
    "incomplete": (openai_chat(["cut"], finish="length"), {"max_output_tokens": 16}),
    "json": (openai_chat(['{"a": 1}']), {"text": {"format": {"type": "json_object"}}}),
}


@pytest.fixture
async def served(stack, upstream):  # type: ignore[no-untyped-def]
    model = unique("open")
    api = await stack.api()
    worker = await stack.worker(
        model=[model], backend="openai", backend_url=f"{upstream.url}/v1", breaker_threshold=100
    )
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        yield model, http


async def events_of(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_every_response_and_event_conforms(served, upstream, scenario: str) -> None:  # type: ignore[no-untyped-def]
    model, http = served
    reply, extra = SCENARIOS[scenario]
    upstream.route(CHAT, reply)
    body = {"model": model, "input": "hi", **extra}
    whole = await http.post("/v1/responses", json=body)
    assert whole.status_code == 200, whole.text
    both_response(whole.json())
    events = await events_of(http, body)
    assert events and events[-1]["type"] in ("response.completed", "response.incomplete")
    for event in events:
        both_event(event)
    assert events[0]["response"]["usage"] is not None
    stored = await http.get(f"/v1/responses/{events[-1]['response']['id']}")
    both_response(stored.json())


async def test_a_failed_stream_conforms(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, http = served
    reply = openai_chat(["one ", "two ", "three"])
    reply.drop_after = 3
    upstream.route(CHAT, reply)
    events = await events_of(http, {"model": model, "input": "hi"})
    assert events[-1]["type"] == "response.failed"
    for event in events:
        both_event(event)
    both_response((await http.get(f"/v1/responses/{events[-1]['response']['id']}")).json())


async def test_input_file_parts_reach_the_upstream_as_file_parts(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, http = served
    upstream.route(CHAT, openai_chat(["read it"]))
    pdf = b"%PDF-1.4 a tiny document"
    made = await http.post(
        "/v1/files",
        files={"file": ("doc.pdf", pdf, "application/pdf")},
        data={"purpose": "user_data"},
    )
    assert made.status_code == 200, made.text
    inline = "data:application/pdf;base64," + base64.b64encode(b"%PDF inline").decode()
    parts = [
        {"type": "input_text", "text": "summarise"},
        {"type": "input_file", "file_id": made.json()["id"]},
        {"type": "input_file", "file_data": inline, "filename": "b.pdf"},
        {"type": "input_file", "file_url": "https://example.com/c.pdf"},
    ]
    resp = await http.post(
        "/v1/responses", json={"model": model, "input": [{"role": "user", "content": parts}]}
    )
    assert resp.status_code == 200, resp.text
    both_response(resp.json())
    sent = upstream.last.json()["messages"][0]["content"]
    encoded = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    assert sent[1] == {"type": "file", "file": {"filename": "doc.pdf", "file_data": encoded}}
    assert sent[2] == {"type": "file", "file": {"file_data": inline, "filename": "b.pdf"}}
    assert sent[3] == {"type": "file", "file": {"file_url": "https://example.com/c.pdf"}}
    # stored items keep the file id, not the bytes
    listed = (await http.get(f"/v1/responses/{resp.json()['id']}/input_items")).json()
    assert listed["data"][0]["content"][1] == {"type": "input_file", "file_id": made.json()["id"]}
    nope = [{"role": "user", "content": [{"type": "input_file", "file_id": "file-nope"}]}]
    unknown = await http.post("/v1/responses", json={"model": model, "input": nope})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "input[0].content[0]"


async def test_stored_images_say_their_detail(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, http = served
    upstream.route(CHAT, openai_chat(["a cat"]))
    image = {"type": "input_image", "image_url": "https://example.com/cat.png"}
    message = {"role": "user", "content": [image]}
    resp = await http.post("/v1/responses", json={"model": model, "input": [message]})
    assert resp.status_code == 200, resp.text
    sent = upstream.last.json()["messages"][0]["content"][0]
    assert sent == {"type": "image_url", "image_url": {"url": image["image_url"], "detail": "auto"}}
    listed = (await http.get(f"/v1/responses/{resp.json()['id']}/input_items")).json()
    assert listed["data"][0]["content"][0]["detail"] == "auto"
    assert_valid("ResponseItemList", listed)
    conv = (await http.post("/v1/conversations", json={"items": [message]})).json()
    items = (await http.get(f"/v1/conversations/{conv['id']}/items")).json()
    assert_valid("ConversationItemList", items)
