"""The OpenAI Batch API end to end: the official SDK, invalid lines, 400s and limits, tenant
isolation, cancel and expiry, interactive traffic first, quotas and the ledger."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai

from llmq.api.tenancy import Tenant, TenantStore, UsageReader, connect
from llmq.schemas import names
from tests.stack import unique, wait_for

FINAL = ("completed", "failed", "expired", "cancelled")
CHAT = "/v1/chat/completions"


def request_line(custom_id: str, model: str, text: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def batch_file(model: str, n: int, words: int = 2) -> tuple[bytes, dict[str, str]]:
    """n requests; returns the file and custom_id -> the echo answer."""
    lines, expected = [], {}
    for i in range(n):
        text = " ".join(f"w{i}x{k}" for k in range(words))
        lines.append(request_line(f"req-{i}", model, text))
        expected[f"req-{i}"] = text
    return jsonl(lines), expected


async def upload(client: httpx.AsyncClient, data: bytes, **headers: str) -> httpx.Response:
    return await client.post(
        "/v1/files",
        files={"file": ("input.jsonl", data, "application/jsonl")},
        data={"purpose": "batch"},
        headers=headers,
    )


async def start_batch(
    client: httpx.AsyncClient, data: bytes, window: str = "24h", **headers: str
) -> dict[str, Any]:
    resp = await upload(client, data, **headers)
    assert resp.status_code == 200, resp.text
    body = {"input_file_id": resp.json()["id"], "endpoint": CHAT, "completion_window": window}
    resp = await client.post("/v1/batches", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    batch: dict[str, Any] = resp.json()
    return batch


async def wait_batch(
    client: httpx.AsyncClient,
    batch_id: str,
    timeout: float = 30.0,
    statuses: tuple[str, ...] = FINAL,
    **headers: str,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = await client.get(f"/v1/batches/{batch_id}", headers=headers)
            if resp.status_code == 200 and resp.json()["status"] in statuses:
                batch: dict[str, Any] = resp.json()
                return batch
        except httpx.HTTPError:
            pass  # an api being restarted
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} not {statuses} in {timeout}s")
        await asyncio.sleep(0.2)


async def results_of(
    client: httpx.AsyncClient, batch: dict[str, Any], **headers: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for key in ("output_file_id", "error_file_id"):
        lines: list[dict[str, Any]] = []
        if batch.get(key):  # omitted until the batch has such a file
            resp = await client.get(f"/v1/files/{batch[key]}/content", headers=headers)
            assert resp.status_code == 200
            lines = [json.loads(x) for x in resp.text.splitlines() if x.strip()]
        out.append(lines)
    return out[0], out[1]


def assert_exactly_once(
    batch: dict[str, Any],
    output: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    expected: dict[str, str],
) -> None:
    """Every request once in the output or error file, none twice, answers right."""
    seen = [line["custom_id"] for line in output + errors]
    assert sorted(seen) == sorted(expected), (len(seen), len(expected))
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        message = line["response"]["body"]["choices"][0]["message"]["content"]
        assert message == expected[line["custom_id"]]
    counts = batch["request_counts"]
    assert counts == {"total": len(expected), "completed": len(output), "failed": len(errors)}


async def test_sdk_files_and_batches_end_to_end(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("b")
    api = await stack.api()
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    data, expected = batch_file(model, 30)
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    uploaded = await sdk.files.create(file=("requests.jsonl", data), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    assert (await sdk.files.retrieve(uploaded.id)).filename == "requests.jsonl"
    assert (await sdk.files.content(uploaded.id)).content == data
    batch = await sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
    deadline = time.monotonic() + 30
    while batch.status not in FINAL:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.completed == 30
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.usage is not None and batch.usage.total_tokens == 30 * 4
    assert batch.output_file_id and batch.error_file_id is None
    content = await sdk.files.content(batch.output_file_id)
    output = [json.loads(line) for line in content.text.splitlines()]
    assert_exactly_once(batch.model_dump(), output, [], expected)
    assert all(line["id"].startswith("batch_req_") for line in output)
    assert {b.id async for b in sdk.batches.list()} >= {batch.id}
    output_file = await sdk.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"
    assert (await sdk.files.delete(uploaded.id)).deleted
    await sdk.close()
    # The line results go once the output file holds them.
    lines = names.kv_subject(names.RESULTS_BUCKET, names.line_results_key(batch.id[6:]))

    async def no_lines() -> bool:
        info = await api.runtime.js.stream_info(f"KV_{names.RESULTS_BUCKET}", subjects_filter=lines)
        return not info.state.subjects

    await wait_for(no_lines, timeout=10)


async def test_invalid_lines_are_reported_with_their_line_numbers(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("b")
    api = await stack.api()
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    lines: list[Any] = [
        request_line("ok-1", model, "one"),
        "this is not json",
        {"method": "POST", "url": CHAT, "body": {"model": model, "messages": []}},
        {**request_line("bad-url", model, "x"), "url": "/v1/embeddings"},
        request_line("ok-1", model, "duplicate id"),
        request_line("no-model", "no-such-model-anywhere", "x"),
        request_line("bad-body", model, "x", temperature="hot"),
        "",
        request_line("ok-2", model, "two"),
    ]
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, jsonl(lines))
        batch = await wait_batch(client, batch["id"])
        output, errors = await results_of(client, batch)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 8, "completed": 2, "failed": 6}
    assert sorted(line["custom_id"] for line in output) == ["ok-1", "ok-2"]
    by_line = {line["error"]["line"]: line for line in errors}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7]
    assert by_line[2]["error"]["code"] == "invalid_json" and by_line[2]["custom_id"] is None
    assert by_line[3]["error"]["code"] == "missing_custom_id"
    assert by_line[4]["error"]["code"] == "invalid_url"
    assert by_line[5]["error"]["code"] == "duplicate_custom_id"
    assert by_line[6]["error"]["code"] == "model_not_found"
    assert by_line[7]["error"]["code"] == "invalid_request"
    assert all(line["response"] is None for line in errors)
    assert all(line["error"]["message"].startswith(f"line {n}:") for n, line in by_line.items())


async def test_all_lines_invalid_fails_the_batch(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, jsonl([request_line("x", "no-such-model", "x"), "[1]"]))
        batch = await wait_batch(client, batch["id"])
        _, errors = await results_of(client, batch)
    assert batch["status"] == "failed" and batch["failed_at"]
    assert [e["line"] for e in batch["errors"]["data"]] == [1, 2]
    assert len(errors) == 2


async def test_wrong_endpoint_not_jsonl_and_limits(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(batch_max_lines=3, files_max_bytes=2000)
    model = unique("b")
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        good = jsonl([request_line(f"r{i}", model, "x") for i in range(3)])
        file_id = (await upload(client, good)).json()["id"]
        for endpoint in ("/v1/images/generations", "/v1/chat"):
            body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
            resp = await client.post("/v1/batches", json=body)
            assert resp.status_code == 400 and resp.json()["error"]["param"] == "endpoint"
        body = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "forever"}
        resp = await client.post("/v1/batches", json=body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "completion_window"
        body = {"input_file_id": "file-nope", "endpoint": CHAT, "completion_window": "24h"}
        assert (await client.post("/v1/batches", json=body)).status_code == 404
        for not_jsonl in (b"a,b,c\n1,2,3\n", b"", b"\xff\xfe garbage"):
            resp = await upload(client, not_jsonl)
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_file"
        too_many = jsonl([request_line(f"r{i}", model, "x") for i in range(4)])
        resp = await upload(client, too_many)
        assert resp.status_code == 400
        assert "at most 3 requests" in resp.json()["error"]["message"]
        resp = await upload(client, jsonl([request_line("r", model, "x" * 3000)]))
        assert resp.status_code == 413 and "2000 bytes" in resp.json()["error"]["message"]
        resp = await client.post(
            "/v1/files", files={"file": ("a.jsonl", good)}, data={"purpose": "fine-tune"}
        )
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "purpose"


async def tenants(redis_url: str, n: int) -> list[str]:
    """n new tenants in Redis (auth_mode header still needs them for quotas)."""
    redis = connect(redis_url)
    out = [unique("t") for _ in range(n)]
    for name in out:
        await TenantStore(redis).create(Tenant(name=name))
    await redis.aclose()
    return out


async def test_other_tenants_get_404(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("b")
    a, b = await tenants(stack.redis_url, 2)
    api = await stack.api(auth_mode="header", trusted_tenants=f"{a},{b}")
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    alice, bob = {"X-Tenant-ID": a}, {"X-Tenant-ID": b}
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        data, _ = batch_file(model, 3)
        batch = await start_batch(client, data, **alice)
        file_id = batch["input_file_id"]
        batch = await wait_batch(client, batch["id"], **alice)
        assert batch["request_counts"]["completed"] == 3
        job = await client.post(
            "/v1/jobs",
            json={"model": model, "messages": [{"role": "user", "content": "mine"}]},
            headers=alice,
        )
        job_id = job.json()["id"]
        for method, path in (
            ("GET", f"/v1/files/{file_id}"),
            ("GET", f"/v1/files/{file_id}/content"),
            ("GET", f"/v1/files/{batch['output_file_id']}/content"),
            ("DELETE", f"/v1/files/{file_id}"),
            ("GET", f"/v1/batches/{batch['id']}"),
            ("POST", f"/v1/batches/{batch['id']}/cancel"),
            ("GET", f"/v1/jobs/{job_id}"),
            ("DELETE", f"/v1/jobs/{job_id}"),
        ):
            resp = await client.request(method, path, headers=bob)
            assert resp.status_code == 404, (method, path, resp.status_code)
            assert resp.json()["error"]["type"] == "invalid_request_error"
            assert (await client.request(method, path, headers=alice)).status_code == 200
        for path in ("/v1/files", "/v1/batches", "/v1/jobs"):
            assert (await client.get(path, headers=bob)).json()["data"] == []
            assert (await client.get(path, headers=alice)).json()["data"]


async def test_list_pagination(stack) -> None:  # type: ignore[no-untyped-def]
    (name,) = await tenants(stack.redis_url, 1)
    api = await stack.api(auth_mode="header", trusted_tenants=name)
    tenant = {"X-Tenant-ID": name}
    model = unique("b")
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        ids = []
        for i in range(5):
            resp = await upload(client, jsonl([request_line(f"r{i}", model, "x")]), **tenant)
            ids.append(resp.json()["id"])
        page = (await client.get("/v1/files?limit=2", headers=tenant)).json()
        assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"]
        rest = (await client.get(f"/v1/files?after={page['last_id']}", headers=tenant)).json()
        assert [f["id"] for f in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
        batches = []
        for file_id in ids[:3]:
            body = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
            batches.append((await client.post("/v1/batches", json=body, headers=tenant)).json())
        page = (await client.get("/v1/batches?limit=2", headers=tenant)).json()
        assert [b["id"] for b in page["data"]] == [batches[2]["id"], batches[1]["id"]]
        assert page["has_more"]
        rest = (await client.get(f"/v1/batches?after={page['last_id']}", headers=tenant)).json()
        assert [b["id"] for b in rest["data"]] == [batches[0]["id"]] and not rest["has_more"]


async def test_cancel_a_running_batch(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("b")
    api = await stack.api()
    worker = await stack.worker(model=[model], capacity=2, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    data, expected = batch_file(model, 20, words=3)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, data)
        await wait_for(lambda: worker.outcomes.get("ok", 0) >= 2, timeout=10)
        resp = await client.post(f"/v1/batches/{batch['id']}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelling"
        assert resp.json()["cancelling_at"]
        batch = await wait_batch(client, batch["id"], timeout=10)
        output, errors = await results_of(client, batch)
    assert batch["status"] == "cancelled" and batch["cancelled_at"]
    assert_exactly_once(batch, output, errors, expected)
    assert len(output) < 20
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    await wait_for(lambda: worker.scheduler.in_flight == 0, timeout=3)


async def test_batch_expires_at_its_completion_window(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("b")
    api = await stack.api()
    await stack.worker(model=[model], capacity=1, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    data, expected = batch_file(model, 12, words=3)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, data, window="2s")
        assert batch["expires_at"] - batch["created_at"] == 2
        batch = await wait_batch(client, batch["id"], timeout=10)
        output, errors = await results_of(client, batch)
    assert batch["status"] == "expired" and batch["expired_at"]
    assert_exactly_once(batch, output, errors, expected)
    assert 1 <= len(output) < 12
    codes = {e["error"]["code"] if e["error"] else e["response"]["status_code"] for e in errors}
    assert codes <= {"batch_expired", 504}


async def test_interactive_request_starts_within_one_job_with_200_batch_jobs_queued(stack) -> None:  # type: ignore[no-untyped-def]
    """Batch jobs take 1 s each; with 200 of them queued, a streamed interactive request
    gets its first token within one batch job's duration."""
    model = unique("b")
    api = await stack.api()
    worker = await stack.worker(model=[model], capacity=2, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    job_seconds = 1.0
    data, _ = batch_file(model, 200, words=10)
    js = api.runtime.js
    consumer = names.consumer_name(names.BATCH_STREAM, model)
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        batch = await start_batch(client, data)

        async def queued() -> bool:
            info = await js.consumer_info(names.BATCH_STREAM, consumer)
            return bool(info.num_pending >= 190 and worker.scheduler.in_flight == 2)

        await wait_for(queued, timeout=10)
        body = {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "interactive"}],
        }
        waits = []
        for _ in range(3):
            started = time.monotonic()
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if '"content":"interactive"' in line:
                        waits.append(time.monotonic() - started)
            await asyncio.sleep(0.3)
        info = await js.consumer_info(names.BATCH_STREAM, consumer)
        assert info.num_pending >= 180  # the batch jobs were still queued throughout
        # A wait ends with the request's own first token, 0.1 s after it started.
        assert max(waits) - 0.1 < job_seconds + 0.25, waits
        await client.post(f"/v1/batches/{batch['id']}/cancel")
        await wait_batch(client, batch["id"], timeout=15)
        info = await js.consumer_info(names.BATCH_STREAM, consumer)
        assert info.num_pending == 0  # the cancelled lines left the queue


async def test_batch_tokens_count_against_quota_and_ledger(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("b")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, max_concurrent=2))
    key, _ = await store.create_key(tenant)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    worker = await stack.worker(model=[model], capacity=4, echo_delay=0.05)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    auth = {"Authorization": f"Bearer {key}"}
    data, expected = batch_file(model, 8, words=3)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, data, **auth)
        batch = await wait_batch(client, batch["id"], timeout=30, **auth)
        output, errors = await results_of(client, batch, **auth)
    assert_exactly_once(batch, output, errors, expected)
    assert len(output) == 8
    # max_concurrent=2: lines beyond two waited for a free slot instead of failing.
    assert worker.scheduler.peak == 2
    reader = UsageReader(redis)
    (row,) = [r for r in await reader.usage(tenant, days=1) if r.model == model]
    assert row.requests == 8 and row.failed == 0
    assert row.prompt_tokens == 8 * 3 and row.completion_tokens == 8 * 3
    ledger = await reader.ledger(tenant, count=20)
    assert sorted(e.job_id for e in ledger) == sorted(
        f"{batch['id'].removeprefix('batch_')}-{n}" for n in range(1, 9)
    )
    await redis.aclose()
