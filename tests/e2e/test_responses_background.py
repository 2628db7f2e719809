"""Background responses on the durable queue: queued → in_progress → completed, cancel,
and a response that outlives the api that took it (SIGKILL) and the worker that ran it
(SIGKILL), with the official SDK polling `responses.retrieve`."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import openai
import pytest

from tests.spec import assert_valid
from tests.stack import unique, wait_for, wait_serving

FINAL = ("completed", "failed", "cancelled", "incomplete")


def dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.model_dump(mode="json", exclude_unset=True)
    return out


def client_of(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def poll(client: openai.AsyncOpenAI, response_id: str, timeout: float = 30.0) -> Any:
    """Retrieve until the response ends; every state seen validates against the spec."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        resp = await client.responses.retrieve(response_id)
        assert_valid("Response", dump(resp))
        if not seen or seen[-1] != resp.status:
            seen.append(str(resp.status))
        if resp.status in FINAL:
            resp.seen = seen  # type: ignore[attr-defined]
            return resp
        if time.monotonic() > deadline:
            raise TimeoutError(f"{response_id} still {resp.status}")
        await asyncio.sleep(0.1)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


async def test_background_runs_to_completion(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("bg")
    api = await stack.api()
    await stack.worker(model=[model], echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = client_of(api.url)
    conv = await client.conversations.create()
    in_conv = await client.responses.create(
        model=model, input=words(3), background=True, conversation=conv.id
    )

    async def appended() -> bool:  # without anyone reading the response
        return len((await client.conversations.items.list(conv.id)).data) == 2

    await wait_for(appended, timeout=20)
    assert (await client.responses.retrieve(in_conv.id)).output_text == words(3)
    created = await client.responses.create(model=model, input=words(8), background=True)
    assert created.status == "queued" and created.background is True
    assert_valid("Response", dump(created))
    done = await poll(client, created.id)
    assert done.status == "completed" and done.output_text == words(8)
    assert done.seen[0] in ("queued", "in_progress") and "in_progress" in done.seen
    assert done.usage is not None and done.usage.output_tokens == 8
    items = await client.conversations.items.list(conv.id, order="asc")
    assert [getattr(i, "role", None) for i in items.data] == ["user", "assistant"]
    await poll(client, in_conv.id)  # read again: appended once
    assert len((await client.conversations.items.list(conv.id)).data) == 2
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model=model, input="x", background=True, store=False)
    plain = await client.responses.create(model=model, input="x")
    with pytest.raises(openai.BadRequestError):
        await client.responses.cancel(plain.id)
    await client.close()


async def test_cancel_a_running_background_response(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("bg")
    api = await stack.api()
    await stack.worker(model=[model], echo_delay=0.3)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = client_of(api.url)
    created = await client.responses.create(model=model, input=words(60), background=True)

    async def running() -> bool:
        return (await client.responses.retrieve(created.id)).status == "in_progress"

    await wait_for(running, timeout=15)
    cancelled = await client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert_valid("Response", dump(cancelled))
    assert (await client.responses.retrieve(created.id)).status == "cancelled"
    again = await client.responses.cancel(created.id)  # cancelling twice changes nothing
    assert again.status == "cancelled"
    await client.close()


async def test_background_survives_an_api_sigkill(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("bg")
    await stack.worker(model=[model], echo_delay=0.2)
    doomed = await stack.api_process()
    url = doomed.url
    await wait_serving(url, model)
    client = client_of(url)
    created = await client.responses.create(model=model, input=words(10), background=True)
    assert created.status == "queued"
    await client.close()
    doomed.signal(signal.SIGKILL)
    doomed.proc.wait(5)
    api = await stack.api()
    client = client_of(api.url)
    done = await poll(client, created.id, timeout=40)
    assert done.status == "completed" and done.output_text == words(10)
    await client.close()


async def test_background_survives_a_worker_sigkill(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("bg")
    api = await stack.api()
    doomed = stack.process("worker", "--model", model, "--capacity", "1", "--echo-delay", "0.3")
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    client = client_of(api.url)
    created = await client.responses.create(model=model, input=words(12), background=True)

    async def running() -> bool:
        return (await client.responses.retrieve(created.id)).status == "in_progress"

    await wait_for(running, timeout=15)
    doomed.signal(signal.SIGKILL)  # mid-generation: the job was never acked
    doomed.proc.wait(5)
    await stack.worker(model=[model], echo_delay=0.01)
    done = await poll(client, created.id, timeout=60)
    assert done.status == "completed" and done.output_text == words(12)
    await client.close()


async def test_quota_holds_for_background_and_delete_cancels(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    """A background response holds the tenant's one concurrency slot until it ends, like any
    job; deleting a running one cancels it and frees the slot."""
    from llmq.api.tenancy import Tenant, TenantStore, connect

    model = unique("bg")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, max_concurrent=1))
    key, _ = await store.create_key(tenant)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    await stack.worker(model=[model], echo_delay=0.3)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    slow = await client.responses.create(model=model, input=words(40), background=True)
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model=model, input="refused while the slot is held")
    await client.responses.delete(slow.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(slow.id)
    api_jobs = api.app.state.batches.jobs
    scope = await api.app.state.responses.scopes.of(tenant)  # stored by tenant scope
    found = await api_jobs.get(scope, slow.id.removeprefix("resp_"))
    assert found is not None and found[0].status == "cancelled"

    async def admitted() -> bool:
        try:
            resp = await client.responses.create(model=model, input="now ok")
        except openai.RateLimitError:
            return False
        return resp.output_text == "now ok"

    await wait_for(admitted, timeout=15, interval=0.2)
    await client.close()
    await redis.aclose()
