"""`GET /v1/models` and `GET /v1/models/{id}`: a key is needed (outside auth_mode=none), and
a tenant sees only the models it may use — live ones, and the aliases that resolve to one;
a model it may not use is a 404 like one that does not exist, so a key cannot probe."""

from __future__ import annotations

import httpx
import openai
import pytest

from llmq.api.tenancy import Tenant, TenantStore, connect
from tests.spec import assert_valid
from tests.stack import unique, wait_for


@pytest.fixture
async def store(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url, timeout=5.0)
    yield TenantStore(client)
    await client.aclose()


async def _key(store: TenantStore, **fields: object) -> tuple[str, str]:
    name = unique("t")
    await store.create(Tenant(name=name, **fields))  # type: ignore[arg-type]
    key, _ = await store.create_key(name)
    return name, key


async def _serving(stack, *models: str, **overrides: object):  # type: ignore[no-untyped-def]
    await stack.worker(model=list(models))
    api = await stack.api(**overrides)
    await wait_for(lambda: all(api.runtime.registry.workers_for(m) for m in models))
    return api


def _not_found(resp: httpx.Response, model: str) -> None:
    assert resp.status_code == 404, resp.text
    body = resp.json()
    assert_valid("ErrorResponse", body)
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error"
    assert model in body["error"]["message"]


async def test_a_tenant_lists_and_retrieves_only_its_models(stack, store) -> None:  # type: ignore[no-untyped-def]
    mine, theirs = unique("m"), unique("m")
    fast, sneaky = unique("alias"), unique("alias")
    api = await _serving(
        stack, mine, theirs, auth_mode="keys", key_cache_ttl=0,
        aliases=[f"{fast}={mine}", f"{sneaky}={theirs}"],
    )  # fmt: skip
    _tenant, key = await _key(store, models=[mine])
    async with httpx.AsyncClient(base_url=f"{api.url}/v1", timeout=10) as client:
        headers = {"authorization": f"Bearer {key}"}
        listed = await client.get("/models", headers=headers)
        assert listed.status_code == 200
        body = listed.json()
        assert_valid("ListModelsResponse", body)
        assert [m["id"] for m in body["data"]] == sorted([mine, fast])
        for card in body["data"]:
            assert_valid("Model", card)
            assert card["owned_by"] == "echo" and card["created"] > 0
        one = await client.get(f"/models/{mine}", headers=headers)
        assert one.status_code == 200
        assert_valid("Model", one.json())
        assert one.json()["id"] == mine and one.json()["object"] == "model"
        alias = await client.get(f"/models/{fast}", headers=headers)
        assert alias.status_code == 200 and alias.json()["id"] == fast
        # Served, but not this tenant's; an alias of it; nothing at all: the same 404.
        for other in (theirs, sneaky, unique("none")):
            _not_found(await client.get(f"/models/{other}", headers=headers), other)

    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    assert {m.id for m in (await sdk.models.list()).data} == {mine, fast}
    assert (await sdk.models.retrieve(mine)).id == mine
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.models.retrieve(theirs)
    assert missing.value.code == "model_not_found"
    await sdk.close()


async def test_a_tenant_allowed_every_model_sees_every_live_one(stack, store) -> None:  # type: ignore[no-untyped-def]
    first, second = unique("m"), unique("m")
    api = await _serving(stack, first, second, auth_mode="keys", key_cache_ttl=0)
    _tenant, key = await _key(store)
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    assert {first, second} <= {m.id for m in (await sdk.models.list()).data}
    await sdk.close()


async def test_models_need_a_key(stack, store) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await _serving(stack, model, auth_mode="keys", key_cache_ttl=0)
    async with httpx.AsyncClient(base_url=f"{api.url}/v1", timeout=10) as client:
        for path in ("/models", f"/models/{model}"):
            missing = await client.get(path)
            assert missing.status_code == 401
            assert_valid("ErrorResponse", missing.json())
            assert missing.json()["error"]["code"] == "missing_api_key"
            wrong = await client.get(path, headers={"authorization": "Bearer sk-llmq-nope"})
            assert wrong.status_code == 401
            assert wrong.json()["error"]["code"] == "invalid_api_key"
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="sk-llmq-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await sdk.models.retrieve(model)
    await sdk.close()


@pytest.mark.parametrize("shape", ["org/{}", "ollama:{}", "org/team/{}:latest"])
async def test_ids_with_slashes_and_colons(stack, store, shape: str) -> None:  # type: ignore[no-untyped-def]
    model = shape.format(unique("m"))
    api = await _serving(stack, model, auth_mode="keys", key_cache_ttl=0)
    _tenant, key = await _key(store, models=[model])
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    card = await sdk.models.retrieve(model)
    assert card.id == model and card.owned_by == "echo"
    assert [m.id for m in (await sdk.models.list()).data] == [model]
    await sdk.close()
    async with httpx.AsyncClient(base_url=f"{api.url}/v1", timeout=10) as client:
        headers = {"authorization": f"Bearer {key}"}
        raw = await client.get(f"/models/{model}", headers=headers)
        assert raw.status_code == 200 and raw.json()["id"] == model
        assert_valid("Model", raw.json())
        _not_found(await client.get(f"/models/{model}x", headers=headers), f"{model}x")


async def test_trusted_header_mode_filters_by_the_named_tenant(stack, store) -> None:  # type: ignore[no-untyped-def]
    mine, theirs = unique("m"), unique("m")
    tenant = unique("t")
    await store.create(Tenant(name=tenant, models=[mine]))
    api = await _serving(stack, mine, theirs, auth_mode="header", trusted_tenants=[tenant, "ghost"])
    async with httpx.AsyncClient(base_url=f"{api.url}/v1", timeout=10) as client:
        listed = await client.get("/models", headers={"X-Tenant-ID": tenant})
        assert listed.status_code == 200
        assert [m["id"] for m in listed.json()["data"]] == [mine]
        _not_found(await client.get(f"/models/{theirs}", headers={"X-Tenant-ID": tenant}), theirs)
        assert (await client.get("/models")).status_code == 401
        assert (await client.get("/models", headers={"X-Tenant-ID": "intruder"})).status_code == 403
        ghost = await client.get("/models", headers={"X-Tenant-ID": "ghost"})  # trusted, no record
        assert ghost.status_code == 403 and ghost.json()["error"]["code"] == "unknown_tenant"


async def test_without_tenancy_models_are_open(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await _serving(stack, model)  # auth_mode=none
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    assert model in {m.id for m in (await sdk.models.list()).data}
    assert (await sdk.models.retrieve(model)).id == model
    await sdk.close()


async def test_an_api_starting_beside_a_worker_lists_its_model_at_once(stack) -> None:  # type: ignore[no-untyped-def]
    """The api's start waits for the registry's first replay: once ready, it knows the
    workers beating already and their catalog entries, with no wait on the caller's side."""
    model = unique("m")
    await stack.worker(model=[model])
    api = await stack.api()
    assert api.runtime.registry.synced.is_set()
    async with httpx.AsyncClient(base_url=f"{api.url}/v1", timeout=10) as client:
        card = await client.get(f"/models/{model}")
        assert card.status_code == 200, card.text
        assert card.json()["id"] == model and card.json()["created"] > 0
