"""Conversations through the official SDK: create with items and metadata, get, update,
delete; items list (paged, both orders), add, get, delete; a response created with
`conversation` reads its history and appends to it; another tenant sees none of it and the
tokens of responses are booked on the tenant's usage like chat's."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from llmq.api.tenancy import Tenant, TenantStore, UsageReader, connect
from llmq.schemas import names
from tests.spec import assert_valid
from tests.stack import unique, wait_for


def dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.model_dump(mode="json", exclude_unset=True)
    return out


@pytest.fixture
async def echo(stack):  # type: ignore[no-untyped-def]
    model = unique("conv")
    api = await stack.api()
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    yield api, model, client
    await client.close()


async def test_conversation_lifecycle_and_items(echo) -> None:  # type: ignore[no-untyped-def]
    _api, _model, client = echo
    conv = await client.conversations.create(
        items=[
            {"type": "message", "role": "user", "content": "first"},
            {"type": "message", "role": "assistant", "content": "reply"},
        ],
        metadata={"topic": "demo"},
    )
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "demo"}
    assert_valid("ConversationResource", dump(conv))
    got = await client.conversations.retrieve(conv.id)
    assert got.id == conv.id and got.created_at == conv.created_at
    updated = await client.conversations.update(conv.id, metadata={"topic": "new"})
    assert updated.metadata == {"topic": "new"}
    assert_valid("ConversationResource", dump(updated))

    added = await client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "user", "content": "third"}]
    )
    assert len(added.data) == 1
    assert_valid("ConversationItemList", dump(added))
    listing = await client.conversations.items.list(conv.id, order="asc")
    texts = [item.content[0].text for item in listing.data]  # type: ignore[union-attr]
    assert texts == ["first", "reply", "third"]
    assert_valid("ConversationItemList", dump(listing))
    newest = await client.conversations.items.list(conv.id, limit=2)
    assert [i.id for i in newest.data] == [listing.data[2].id, listing.data[1].id]
    assert newest.has_more
    rest = await client.conversations.items.list(conv.id, limit=2, after=newest.data[-1].id)
    assert [i.id for i in rest.data] == [listing.data[0].id] and not rest.has_more
    one = await client.conversations.items.retrieve(listing.data[1].id, conversation_id=conv.id)
    assert one.id == listing.data[1].id
    assert_valid("ConversationItem", dump(one))
    after_delete = await client.conversations.items.delete(
        listing.data[1].id, conversation_id=conv.id
    )
    assert after_delete.id == conv.id
    remaining = await client.conversations.items.list(conv.id, order="asc")
    assert [i.id for i in remaining.data] == [listing.data[0].id, listing.data[2].id]
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.retrieve(listing.data[1].id, conversation_id=conv.id)

    deleted = await client.conversations.delete(conv.id)
    assert deleted.deleted and deleted.id == conv.id
    assert_valid("DeletedConversationResource", dump(deleted))
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(conv.id)


async def test_response_in_a_conversation(echo) -> None:  # type: ignore[no-untyped-def]
    _api, model, client = echo
    conv = await client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "earlier words here"}]
    )
    first = await client.responses.create(model=model, input="hello", conversation=conv.id)
    assert first.output_text == "hello"
    assert first.conversation is not None and first.conversation.id == conv.id
    assert_valid("Response", dump(first))
    alone = await client.responses.create(model=model, input="hello")
    assert first.usage is not None and alone.usage is not None
    assert first.usage.input_tokens > alone.usage.input_tokens  # the history was sent
    stream = await client.responses.create(
        model=model, input="streamed too", conversation={"id": conv.id}, stream=True
    )
    _ = [event async for event in stream]
    items = await client.conversations.items.list(conv.id, order="asc")
    roles = [(i.type, getattr(i, "role", None)) for i in items.data]
    assert roles == [("message", "user")] + [("message", "user"), ("message", "assistant")] * 2
    last = items.data[-1]
    assert last.content[0].text == "streamed too"  # type: ignore[union-attr]
    assert_valid("ConversationItemList", dump(items))
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=model, input="x", conversation="conv_" + "0" * 32)


async def test_tenants_see_only_their_own(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("conv")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    keys = []
    tenants = [unique("t") for _ in range(2)]
    for tenant in tenants:
        await store.create(Tenant(name=tenant))
        keys.append((await store.create_key(tenant))[0])
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    mine = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=keys[0], max_retries=0)
    theirs = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=keys[1], max_retries=0)
    resp = await mine.responses.create(model=model, input="a b c")
    conv = await mine.conversations.create(items=[{"role": "user", "content": "x"}])
    item_id = (await mine.conversations.items.list(conv.id)).data[0].id
    for call in (
        lambda: theirs.responses.retrieve(resp.id),
        lambda: theirs.responses.delete(resp.id),
        lambda: theirs.responses.cancel(resp.id),
        lambda: theirs.responses.input_items.list(resp.id),
        lambda: theirs.responses.create(model=model, input="x", previous_response_id=resp.id),
        lambda: theirs.responses.create(model=model, input="x", conversation=conv.id),
        lambda: theirs.conversations.retrieve(conv.id),
        lambda: theirs.conversations.update(conv.id, metadata={"a": "b"}),
        lambda: theirs.conversations.delete(conv.id),
        lambda: theirs.conversations.items.list(conv.id),
        lambda: theirs.conversations.items.retrieve(item_id, conversation_id=conv.id),
        lambda: theirs.conversations.items.delete(item_id, conversation_id=conv.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call()
    assert (await mine.responses.retrieve(resp.id)).output_text == "a b c"
    assert (await mine.conversations.retrieve(conv.id)).id == conv.id

    async def booked() -> bool:
        rows = [r for r in await UsageReader(redis).usage(tenants[0], days=1) if r.model == model]
        return bool(rows) and rows[0].completion_tokens == 3

    await wait_for(booked)
    ledger = {e.job_id for e in await UsageReader(redis).ledger(tenants[0], count=10)}
    assert resp.id.removeprefix("resp_") in ledger
    await mine.close()
    await theirs.close()
    await redis.aclose()


async def test_a_full_conversation_is_a_clear_413(echo) -> None:  # type: ignore[no-untyped-def]
    _api, _model, client = echo
    conv = await client.conversations.create()
    big = {"type": "message", "role": "user", "content": "x" * 300_000}
    with pytest.raises(openai.APIStatusError) as caught:
        for _ in range(10):  # NATS max_payload is 1 MiB on the test server
            await client.conversations.items.create(conv.id, items=[big])
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "conversation_too_large"  # type: ignore[index]
    assert len((await client.conversations.items.list(conv.id)).data) in (2, 3)


async def test_a_deleted_tenants_responses_and_conversations_go_with_it(stack) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from llmq.dispatcher import kv as kvs
    from llmq.schemas import names

    admin = {"Authorization": "Bearer admin-secret"}
    model = unique("conv")
    name = unique("acme")
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token="admin-secret")
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(base_url=api.url, timeout=15) as http:

        async def tenant() -> tuple[dict[str, Any], openai.AsyncOpenAI]:
            made = await http.post("/admin/tenants", json={"name": name}, headers=admin)
            key = await http.post(f"/admin/tenants/{name}/keys", json={}, headers=admin)
            client = openai.AsyncOpenAI(
                base_url=f"{api.url}/v1", api_key=key.json()["key"], max_retries=0
            )
            return made.json(), client

        first, old = await tenant()
        resp = await old.responses.create(model=model, input="kept by the first")
        conv = await old.conversations.create(items=[{"role": "user", "content": "x"}])
        deleted = await http.delete(f"/admin/tenants/{name}", headers=admin)
        assert deleted.status_code == 200
        purged = deleted.json()["purged"]
        assert (purged["responses"], purged["conversations"]) == (1, 1)
        _second, new = await tenant()
        with pytest.raises(openai.NotFoundError):
            await new.responses.retrieve(resp.id)
        with pytest.raises(openai.NotFoundError):
            await new.conversations.retrieve(conv.id)
        store = api.app.state.responses.store
        pattern = names.tenant_keys_pattern(names.tenant_scope(name, first["id"]))
        for bucket in (store.responses, store.conversations):
            assert await kvs.scan(bucket, pattern, meta_only=True) == {}
        await http.delete(f"/admin/tenants/{name}", headers=admin)
        await old.close()
        await new.close()


async def test_a_refused_write_uses_no_rpm_and_an_accepted_one_does(stack) -> None:  # type: ignore[no-untyped-def]
    """A conversation write counts against the RPM once it is accepted, just before it is
    stored: refused ones (malformed, too many items, unknown conversation, over the storage
    bound) leave the tenant's rate in Valkey as it was; past the RPM a good write is a 429
    and is not stored."""
    redis = connect(stack.redis_url)
    store = TenantStore(redis)
    name = unique("crpm")
    await store.create(Tenant(name=name, rpm=2, storage_bytes=20_000))
    key, _ = await store.create_key(name)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    item = {"type": "message", "role": "user", "content": "hi"}
    big = {"type": "message", "role": "user", "content": "x" * 30_000}
    unknown = "conv_" + "f" * 32
    refusals: list[tuple[str, dict[str, Any] | bytes, int]] = [
        ("/v1/conversations", b"{", 400),
        ("/v1/conversations", {"items": [item] * 21}, 400),
        ("/v1/conversations", {"metadata": {"k": "v" * 600}}, 400),
        ("/v1/conversations", {"items": [big]}, 413),
        (f"/v1/conversations/{unknown}/items", {"items": [item]}, 404),
        (f"/v1/conversations/{unknown}", {"metadata": {"k": "v"}}, 404),
    ]
    rate = names.rate_key(name)
    headers = {"authorization": f"Bearer {key}"}
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=10) as http:

        async def refuse(path: str, body: dict[str, Any] | bytes, status: int) -> None:
            sent = body if isinstance(body, bytes) else None
            resp = await http.post(path, content=sent, json=None if sent else body)
            assert resp.status_code == status, resp.text

        for _ in range(2):  # more refusals than the RPM allows calls
            for path, body, status in refusals:
                await refuse(path, body, status)
        assert await redis.hgetall(rate) == {}  # never counted
        conv = await sdk.conversations.create(items=[item])  # type: ignore[list-item]
        counted = await redis.hgetall(rate)
        assert counted  # the accepted one was
        await refuse(f"/v1/conversations/{conv.id}/items", {"items": [big]}, 413)
        await refuse(f"/v1/conversations/{conv.id}/items", {"items": "x"}, 400)
        await refuse(f"/v1/conversations/{conv.id}", {"metadata": 1}, 400)
        assert await redis.hgetall(rate) == counted
        await sdk.conversations.items.create(conv.id, items=[item])  # type: ignore[list-item]
        with pytest.raises(openai.RateLimitError):
            await sdk.conversations.items.create(conv.id, items=[item])  # type: ignore[list-item]
        listed = await sdk.conversations.items.list(conv.id)
    assert len(listed.data) == 2  # the write refused with a 429 was not stored
    await sdk.close()
    await redis.aclose()


async def test_a_full_conversation_uses_no_rpm(stack) -> None:  # type: ignore[no-untyped-def]
    """Items that would make the record larger than NATS takes are a 413 before the write
    is counted: the tenant's next good write still fits in its RPM."""
    redis = connect(stack.redis_url)
    store = TenantStore(redis)
    name = unique("cfull")
    await store.create(Tenant(name=name, rpm=3))
    key, _ = await store.create_key(name)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    big = {"type": "message", "role": "user", "content": "x" * 600_000}
    small = {"type": "message", "role": "user", "content": "hi"}
    conv = await sdk.conversations.create()  # 1
    await sdk.conversations.items.create(conv.id, items=[big])  # type: ignore[list-item]  # 2
    counted = await redis.hgetall(names.rate_key(name))
    for _ in range(3):  # NATS max_payload is 1 MiB on the test server
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.conversations.items.create(conv.id, items=[big])  # type: ignore[list-item]
        assert caught.value.status_code == 413
        assert caught.value.body["code"] == "conversation_too_large"  # type: ignore[index]
    assert await redis.hgetall(names.rate_key(name)) == counted
    await sdk.conversations.items.create(conv.id, items=[small])  # type: ignore[list-item]  # 3
    with pytest.raises(openai.RateLimitError):
        await sdk.conversations.items.create(conv.id, items=[small])  # type: ignore[list-item]
    assert len((await sdk.conversations.items.list(conv.id)).data) == 2
    await sdk.close()
    await redis.aclose()
