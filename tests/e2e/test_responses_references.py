"""`item_reference` items as the AI SDK and reasoning tool loops send them: resolved against
the tenant's stored items (response output and input items, conversation items), in order;
another tenant's or an unknown id is a 404 naming the input position, and uses no quota;
reasoning items sent back (plain or with `encrypted_content`) are accepted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from llmq.api.tenancy import Tenant, TenantStore, UsageReader, connect
from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import FakeUpstream, json_reply, openai_chat

CHAT = "/v1/chat/completions"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        server.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        server.route(CHAT, openai_chat(["Hello ", "there."], usage=(5, 2)))
        yield server


@pytest.fixture
async def two_tenants(stack, redis_server, upstream):  # type: ignore[no-untyped-def]
    model = unique("ref")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    names, keys = [unique("t") for _ in range(2)], []
    for name in names:
        await store.create(Tenant(name=name))
        keys.append((await store.create_key(name))[0])
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    await stack.worker(model=[model], backend="openai", backend_url=f"{upstream.url}/v1")
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    clients = [openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=k, max_retries=0) for k in keys]
    yield api, model, clients, names, redis
    for client in clients:
        await client.close()
    await redis.aclose()


async def test_references_resolve_in_order(two_tenants, upstream) -> None:  # type: ignore[no-untyped-def]
    _api, model, (mine, _theirs), _names, _redis = two_tenants
    first = await mine.responses.create(model=model, input="hi")
    (answer,) = first.output
    conv = await mine.conversations.create(items=[{"role": "user", "content": "from a conv"}])
    conv_item = (await mine.conversations.items.list(conv.id)).data[0]
    input_item = (await mine.responses.input_items.list(first.id)).data[0]
    second = await mine.responses.create(
        model=model,
        input=[
            {"type": "item_reference", "id": input_item.id},
            {"type": "item_reference", "id": answer.id},
            {"type": "item_reference", "id": conv_item.id},
            {"role": "user", "content": "and now?"},
        ],
    )
    assert second.output_text == "Hello there."
    assert upstream.last.json()["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": [{"type": "text", "text": "from a conv"}]},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
    ]
    # the stored input items are the items referenced, with their own ids
    listed = (await mine.responses.input_items.list(second.id, order="asc")).data
    assert [i.id for i in listed[:3]] == [input_item.id, answer.id, conv_item.id]
    for item in listed:
        assert_valid("ItemResource", item.model_dump(mode="json", exclude_unset=True))


async def test_a_foreign_or_unknown_reference_is_404_and_uses_no_quota(
    two_tenants, upstream
) -> None:  # type: ignore[no-untyped-def]
    api, model, (mine, theirs), names, redis = two_tenants
    first = await mine.responses.create(model=model, input="hi")
    asked = len(upstream.received)
    for ref in (first.output[0].id, "msg_doesnotexist", "../../x"):
        with pytest.raises(openai.NotFoundError) as caught:
            await theirs.responses.create(
                model=model,
                input=[{"role": "user", "content": "x"}, {"type": "item_reference", "id": ref}],
            )
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["type"] == "invalid_request_error" and error["param"] == "input[1]"
        assert ref in error["message"]
    assert len(upstream.received) == asked
    assert await UsageReader(redis).usage(names[1], days=1) == []
    assert await UsageReader(redis).ledger(names[1], count=10) == []
    # a reference without an id is a 400
    async with httpx.AsyncClient(base_url=api.url) as http:
        bad = await http.post(
            "/v1/responses",
            json={"model": model, "input": [{"type": "item_reference"}]},
            headers={"authorization": f"Bearer {theirs.api_key}"},
        )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input[0]"


async def test_reasoning_items_sent_back_are_accepted(two_tenants, upstream) -> None:  # type: ignore[no-untyped-def]
    _api, model, (mine, _theirs), _names, _redis = two_tenants
    reasoning: list[dict[str, Any]] = [
        {"type": "reasoning", "id": "rs_abc", "summary": [], "encrypted_content": "gAAAAopaque"},
        {"type": "reasoning", "id": "rs_def", "summary": [{"type": "summary_text", "text": "hm"}]},
    ]
    resp = await mine.responses.create(
        model=model,
        store=False,
        input=[{"role": "user", "content": "q"}, *reasoning, {"role": "user", "content": "more"}],  # type: ignore[list-item]
    )
    assert resp.output_text == "Hello there."
    assert upstream.last.json()["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "user", "content": [{"type": "text", "text": "more"}]},
    ]
