"""Every limit on every path (issue 27, finding 4): a key's model list and RPM hold on
`/v1/jobs` and batches as on chat; a `/v1/completions` reservation counts every prompt and
every `best_of` completion, and `best_of` is bounded; conversations count toward the
tenant's `storage_bytes`. Real api, worker, nats-server and Valkey; the `openai` SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from llmq.api.tenancy import KeySettings, Tenant, TenantStore, connect
from tests.stack import unique

CHAT = "/v1/chat/completions"


@pytest.fixture
async def store(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield TenantStore(client)
    await client.aclose()


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def test_key_models_and_rpm_hold_on_jobs_and_batches(stack, store) -> None:  # type: ignore[no-untyped-def]
    echo, slow = unique("echo"), unique("slow")
    await stack.worker(model=[echo, slow], capacity=8)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, rpm=1000))
    key, _ = await store.create_key(tenant, settings=KeySettings(models=[slow], rpm=1))
    free_key, _ = await store.create_key(tenant)
    api = await stack.api(auth_mode="keys")
    # the tenant's batch input, uploaded with its other key
    line = {"custom_id": "a", "method": "POST", "url": CHAT, "body": _chat(echo)}
    lines = (json.dumps(line) + "\n" + json.dumps({**line, "custom_id": "b"}) + "\n").encode()
    free = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=free_key, max_retries=0)
    upload = await free.files.create(file=("in.jsonl", lines), purpose="batch")
    await free.close()
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as client:
        # the key may not use `echo`: no job of it runs
        refused = await client.post("/v1/jobs", json=_chat(echo))
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "model_not_allowed"
        # nor a batch of it: refused at submission
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await sdk.batches.create(
                input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
            )
        assert denied.value.code == "model_not_allowed"
        # `slow` is allowed, once a minute
        first = await client.post("/v1/jobs", json=_chat(slow))
        assert first.status_code == 202, first.text
        second = await client.post("/v1/jobs", json=_chat(slow))
        assert second.status_code == 429, second.text
        assert "of this API key" in second.json()["error"]["message"]
        listed = await client.get("/v1/jobs")
        assert listed.status_code == 429  # a list is a request too
    await sdk.close()


async def test_completions_reserve_every_prompt_and_bound_best_of(stack, store) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    await stack.worker(model=[model], capacity=8)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, tpm=4_000))
    key, _ = await store.create_key(tenant)
    api = await stack.api(auth_mode="keys")
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    one = await sdk.completions.with_raw_response.create(model=model, prompt="hi", max_tokens=500)
    assert one.status_code == 200
    # 10 prompts x 500 tokens reserve at least 5,000: more than the TPM of 4,000
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk.completions.create(model=model, prompt=["hi"] * 10, max_tokens=500)
    assert "tpm" in str(limited.value)
    # best_of: bounded like OpenAI's (20), and at least n
    with pytest.raises(openai.BadRequestError) as huge:
        await sdk.completions.create(model=model, prompt="hi", max_tokens=5, best_of=1_000_000)
    assert huge.value.code == "integer_above_max_value" and huge.value.param == "best_of"
    with pytest.raises(openai.RateLimitError):  # 10 completions x 500 > 4,000
        await sdk.completions.create(model=model, prompt="hi", max_tokens=500, best_of=10)
    await sdk.close()


async def test_conversations_count_toward_storage(stack, store) -> None:  # type: ignore[no-untyped-def]
    tenant = unique("t")
    await store.create(Tenant(name=tenant, storage_bytes=300_000))
    key, _ = await store.create_key(tenant)
    api = await stack.api(auth_mode="keys")
    item = {"type": "message", "role": "user", "content": "x" * 50_000}
    headers = {"authorization": f"Bearer {key}"}
    codes = []
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as client:
        for _ in range(200):
            resp = await client.post("/v1/conversations", json={"items": [item]})
            codes.append(resp.status_code)
            if resp.status_code != 200:
                assert resp.status_code == 413, resp.text
                assert resp.json()["error"]["code"] == "storage_quota_exceeded"
        accepted = codes.count(200)
        assert 1 <= accepted <= 6, codes  # 300 KB holds at most six items of 50 KB
        # deleting one makes room for one more
        first = (await client.get("/v1/conversations/none")).status_code
        assert first == 404
        # items added to a conversation count too
        conv = await client.post("/v1/conversations", json={})
        if conv.status_code == 200:
            added = await client.post(
                f"/v1/conversations/{conv.json()['id']}/items", json={"items": [item]}
            )
            assert added.status_code == 413, added.text
        # files share the quota: an upload larger than what is left is refused
        data = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n'
        upload = await client.post(
            "/v1/files",
            files={"file": ("in.jsonl", data * 1_000, "application/jsonl")},
            data={"purpose": "batch"},
        )
        assert upload.status_code == 413, upload.text
