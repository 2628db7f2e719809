"""The Responses API through the official SDK against llmq with an echo worker: plain,
streamed (raw events and the `responses.stream()` helper), retrieve, delete, input items,
previous_response_id, and tenant isolation."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.spec import assert_valid
from tests.stack import unique, wait_for


@pytest.fixture
async def echo(stack):  # type: ignore[no-untyped-def]
    model = unique("resp")
    api = await stack.api()
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    yield api, model, client
    await client.close()


def dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.model_dump(mode="json", exclude_unset=True)
    return out


async def test_plain_response_retrieve_delete(echo) -> None:  # type: ignore[no-untyped-def]
    _api, model, client = echo
    resp = await client.responses.create(
        model=model,
        input="hello there world",
        instructions="be brief",
        metadata={"k": "v"},
        max_output_tokens=50,
    )
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.status == "completed" and resp.output_text == "hello there world"
    assert resp.instructions == "be brief" and resp.metadata == {"k": "v"}
    assert resp.usage is not None and resp.usage.output_tokens == 3
    assert resp.usage.input_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.store is True
    assert_valid("Response", dump(resp))
    again = await client.responses.retrieve(resp.id)
    assert again.output_text == "hello there world" and again.id == resp.id
    assert_valid("Response", dump(again))
    items = await client.responses.input_items.list(resp.id)
    assert len(items.data) == 1 and items.data[0].type == "message"
    assert_valid("ResponseItemList", dump(items))
    await client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(resp.id)


async def test_store_false_is_not_kept(echo) -> None:  # type: ignore[no-untyped-def]
    _api, model, client = echo
    resp = await client.responses.create(model=model, input="not kept", store=False)
    assert resp.output_text == "not kept" and resp.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(resp.id)


async def test_item_input_and_previous_response(echo) -> None:  # type: ignore[no-untyped-def]
    _api, model, client = echo
    first = await client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "first turn"}]},
        ],
    )
    assert first.output_text == "first turn"
    second = await client.responses.create(
        model=model, input="second turn", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "second turn"
    # the history reached the model: more input tokens than the new input alone
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    items = await client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["message"]  # only its own input
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(
            model=model, input="x", previous_response_id="resp_" + "0" * 32
        )


async def test_streamed_events(echo) -> None:  # type: ignore[no-untyped-def]
    _api, model, client = echo
    stream = await client.responses.create(model=model, input="one two three", stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds.count("response.output_text.delta") == 3
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for event in events:
        assert_valid("ResponseStreamEvent", dump(event))
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "one two three"
    stored = await client.responses.retrieve(done.response.id)  # stored before the end
    assert stored.output_text == "one two three"


async def test_stream_helper(echo) -> None:  # type: ignore[no-untyped-def]
    _api, model, client = echo
    async with client.responses.stream(model=model, input="helper works") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "helper works" and final.output_text == "helper works"


async def test_raw_sse_has_event_lines(echo) -> None:  # type: ignore[no-untyped-def]
    api, model, _client = echo
    body = {"model": model, "input": "raw", "stream": True}
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        async with http.stream("POST", "/v1/responses", json=body) as resp:
            text = (await resp.aread()).decode()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[0].startswith("event: response.created\ndata: {")
    assert all(b.startswith("event: ") for b in blocks)
    assert blocks[-1].startswith("event: response.completed\n")


async def test_bad_requests(echo) -> None:  # type: ignore[no-untyped-def]
    api, model, client = echo
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=model, input=[{"type": "web_search_call"}])
    assert caught.value.status_code == 400
    # a built-in tool is left out by default (the model table's builtin_tools) and named
    omitted = await client.responses.with_raw_response.create(
        model=model, input="x", tools=[{"type": "web_search"}]
    )
    assert omitted.headers["x-llmq-omitted"] == "tools[0]=web_search"
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(
            model=model, input="x", previous_response_id="resp_x", conversation="conv_y"
        )
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input="x")
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        resp = await http.post("/v1/responses", content=b"{not json")
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
        resp = await http.post("/v1/responses", json={"model": model})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"
        resp = await http.post(f"/v1/responses/resp_{'0' * 32}/cancel")
        assert resp.status_code == 404
