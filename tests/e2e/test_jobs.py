"""Native async jobs end to end: submit, poll, list, cancel, expiry, a model with no live
worker, signed and retried webhooks, quotas and the ledger."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from llmq.api.batch.webhooks import SIGNATURE_HEADER, verify
from llmq.api.tenancy import Tenant, TenantStore, UsageReader, connect
from tests.stack import unique, wait_for

FINAL = ("completed", "failed", "cancelled", "expired")


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def wait_job(
    client: httpx.AsyncClient, job_id: str, timeout: float = 15.0, **headers: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        if resp.status_code == 200 and resp.json()["status"] in FINAL:
            job: dict[str, Any] = resp.json()
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: {resp.text}")
        await asyncio.sleep(0.1)


async def test_submit_poll_and_list(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("j")
    api = await stack.api()
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        resp = await client.post(
            "/v1/jobs", json=chat(model, "later please", metadata={"order": "42"}, stream=True)
        )
        assert resp.status_code == 202, resp.text
        job = resp.json()
        assert job["id"].startswith("job_") and job["status"] == "queued"
        assert resp.headers["x-request-id"] == job["id"]
        assert job["metadata"] == {"order": "42"} and job["created_at"] and job["expires_at"]
        done = await wait_job(client, job["id"])
        assert done["status"] == "completed" and done["status_code"] == 200
        assert done["result"]["choices"][0]["message"]["content"] == "later please"
        assert done["result"]["object"] == "chat.completion"  # never streamed
        assert done["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        assert done["started_at"] and done["completed_at"] and done["error"] is None
        ids = [job["id"]]
        for i in range(4):
            resp = await client.post("/v1/jobs", json=chat(model, f"n{i}"))
            ids.append(resp.json()["id"])
        page = (await client.get("/v1/jobs", params={"limit": 3})).json()
        newest = ids[::-1]
        assert [j["id"] for j in page["data"]][:3] == newest[:3] and page["has_more"]
        rest = (await client.get("/v1/jobs", params={"after": page["last_id"]})).json()
        assert [j["id"] for j in rest["data"]][:2] == newest[3:5]
        embed = await client.post(
            "/v1/jobs", json={"endpoint": "/v1/embeddings", "model": model, "input": "vector"}
        )
        assert embed.status_code == 202
        assert (await wait_job(client, embed.json()["id"]))["result"]["object"] == "list"


async def test_bad_requests(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        resp = await client.post("/v1/jobs", json=chat("no-such-model", "x"))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
        resp = await client.post("/v1/jobs", json={"model": "m", "messages": "nope"})
        assert resp.status_code == 400
        resp = await client.post("/v1/jobs", json=chat("m", "x", webhook_url="ftp://x"))
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "webhook_url"
        resp = await client.post("/v1/jobs", content=b"[1, 2]")
        assert resp.status_code == 400
        for job_id in ("job_nope", "job_" + "0" * 32, "whatever"):
            assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 404
            assert (await client.delete(f"/v1/jobs/{job_id}")).status_code == 404


async def test_job_waits_for_a_worker_and_expires_without_one(stack) -> None:  # type: ignore[no-untyped-def]
    """A known model with no live worker: the job is queued (not a 503) and runs once a
    worker comes; with nobody to run it, it expires at its deadline."""
    model = unique("j")
    worker = await stack.worker(model=[model])
    api = await stack.api(job_deadline=1.5)
    # Known from its LLMQ_MODELS entry, which the api watches apart from the workers: wait
    # for both, or the model is briefly unknown (404) once its only worker has left.
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    await wait_for(lambda: api.runtime.registry.model_info(model))
    await worker.close()
    await wait_for(lambda: not api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        resp = await client.post("/v1/jobs", json=chat(model, "nobody"))
        assert resp.status_code == 202, resp.text
        expired = await wait_job(client, resp.json()["id"], timeout=20)
        assert expired["status"] == "expired" and expired["expired_at"]
        assert expired["error"]["code"] == "job_expired"
    patient = await stack.api()
    await wait_for(lambda: patient.runtime.registry.model_info(model))
    async with httpx.AsyncClient(base_url=patient.url, timeout=10) as client:
        resp = await client.post("/v1/jobs", json=chat(model, "eventually"))
        assert resp.status_code == 202, resp.text
        job = resp.json()
        await asyncio.sleep(0.5)
        assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "queued"
        await stack.worker(model=[model])
        done = await wait_job(client, job["id"])
        assert done["result"]["choices"][0]["message"]["content"] == "eventually"


async def test_cancel_stops_the_worker(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("j")
    api = await stack.api()
    worker = await stack.worker(model=[model], echo_delay=0.2)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    words = " ".join(f"w{i}" for i in range(100))
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        job = (await client.post("/v1/jobs", json=chat(model, words))).json()

        async def running() -> bool:
            resp = await client.get(f"/v1/jobs/{job['id']}")
            return bool(resp.json()["status"] == "in_progress")

        await wait_for(running, timeout=5)
        resp = await client.delete(f"/v1/jobs/{job['id']}")
        assert resp.status_code == 200
        assert resp.json()["status"] == "cancelled" and resp.json()["cancelled_at"]
        await wait_for(lambda: worker.outcomes.get("cancelled") == 1, timeout=2)
        again = await client.delete(f"/v1/jobs/{job['id']}")
        assert again.json()["status"] == "cancelled"


class Receiver:
    """A webhook endpoint: answers 500 to the first `failures` POSTs, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[float, dict[str, str], bytes]] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]  # the port the kernel gave it
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n")[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.calls.append((time.monotonic(), headers, body))
        status = "500 Internal Server Error" if len(self.calls) <= self.failures else "200 OK"
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_webhook_is_signed_and_retried_with_backoff(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("j")
    secret = "whsec-test"
    api = await stack.api(webhook_secret=secret, webhook_allow="127.0.0.1/32")
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    receiver = await Receiver(failures=2).start()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        job = (
            await client.post("/v1/jobs", json=chat(model, "ring me", webhook_url=receiver.url))
        ).json()
        assert job["webhook_status"] == "pending"
        await wait_for(lambda: len(receiver.calls) == 3, timeout=10)

        async def recorded() -> bool:
            resp = await client.get(f"/v1/jobs/{job['id']}")
            return bool(resp.json()["webhook_status"] == "delivered")

        await wait_for(recorded, timeout=3)
    await receiver.stop()
    times = [t for t, _, _ in receiver.calls]
    assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 1.9  # backoff 1 s, 2 s
    for attempt, (_, headers, body) in enumerate(receiver.calls, start=1):
        assert headers["llmq-webhook-id"] == job["id"].removeprefix("job_")
        assert headers["llmq-webhook-attempt"] == str(attempt)
        assert verify(secret, headers[SIGNATURE_HEADER.lower()], body)
        assert not verify("wrong", headers[SIGNATURE_HEADER.lower()], body)
        payload = json.loads(body)
        assert payload["id"] == job["id"] and payload["status"] == "completed"
        assert payload["result"]["choices"][0]["message"]["content"] == "ring me"


async def test_webhook_urls_that_reach_inside_are_refused(stack) -> None:  # type: ignore[no-untyped-def]
    """Finding 1 of issue 12: every spelling of loopback, and credentials in the URL, are a
    400 at submission (no job, no quota, no request to the receiver) unless the operator
    allows the receiver."""
    model = unique("j")
    receiver = await Receiver(failures=0).start()
    port = receiver.port
    api = await stack.api()
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    inside = [
        f"http://127.0.0.1:{port}/hook",
        f"https://127.0.0.1:{port}/hook",
        f"https://localhost:{port}/hook",
        f"https://0x7f000001:{port}/hook",
        f"https://127.1:{port}/hook",
        f"https://[::ffff:127.0.0.1]:{port}/hook",
        f"https://user:pw@127.0.0.1:{port}/hook",
        "http://[::1/x",
    ]
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        for url in inside:
            resp = await client.post("/v1/jobs", json=chat(model, "x", webhook_url=url))
            assert resp.status_code == 400, (url, resp.text)
            error = resp.json()["error"]
            assert error["param"] == "webhook_url" and error["code"] == "invalid_webhook_url"
            assert set(error) == {"message", "type", "param", "code"}
        listed = (await client.get("/v1/jobs", params={"limit": 100})).json()["data"]
        assert [j for j in listed if j["model"] == model] == []
    await api.stop()  # its webhook sender (no allow list) would refuse the delivery below
    allowed = await stack.api(webhook_allow="127.0.0.1/32")
    async with httpx.AsyncClient(base_url=allowed.url, timeout=10) as client:
        resp = await client.post("/v1/jobs", json=chat(model, "in", webhook_url=inside[0]))
        assert resp.status_code == 202, resp.text
        resp = await client.post("/v1/jobs", json=chat(model, "x", webhook_url=inside[6]))
        assert resp.status_code == 400 and "credentials" in resp.json()["error"]["message"]
    await wait_for(lambda: len(receiver.calls) == 1, timeout=10)
    await receiver.stop()


async def test_job_tokens_count_against_quota_and_ledger(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("j")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, max_concurrent=1))
    key, _ = await store.create_key(tenant)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    await stack.worker(model=[model], echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        job = (await client.post("/v1/jobs", json=chat(model, "a b c d"), headers=auth)).json()
        # The queued job holds the tenant's one concurrency slot.
        refused = await client.post("/v1/jobs", json=chat(model, "too many"), headers=auth)
        assert refused.status_code == 429 and "retry-after" in refused.headers
        done = await wait_job(client, job["id"], **auth)
        assert done["usage"]["total_tokens"] == 8
        await asyncio.sleep(0.2)
        again = await client.post("/v1/jobs", json=chat(model, "now ok"), headers=auth)
        assert again.status_code == 202
        await wait_job(client, again.json()["id"], **auth)
    reader = UsageReader(redis)
    (row,) = [r for r in await reader.usage(tenant, days=1) if r.model == model]
    assert row.requests == 2 and row.prompt_tokens == 4 + 2 and row.completion_tokens == 4 + 2
    ledger = {e.job_id for e in await reader.ledger(tenant, count=10)}
    assert ledger == {job["id"].removeprefix("job_"), again.json()["id"].removeprefix("job_")}
    await redis.aclose()
