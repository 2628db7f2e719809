"""One structured log line per request (JSON on request) with the request id returned as
X-Request-ID, tenant, model, worker, status, latency and tokens, and never a key, a prompt or
a backend credential; `traceparent` travels from the HTTP request to the upstream."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from llmq.api.logs import JsonFormatter
from llmq.api.request_log import RequestLog
from llmq.api.request_record import RequestRecord
from llmq.api.tenancy import Tenant, TenantStore, connect
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import FakeUpstream, json_reply, openai_chat

PROMPT = "the secret prompt 7c1f"
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Capture:
    """The `llmq.request` lines, formatted as the api formats them."""

    def __init__(self, as_json: bool) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        formatter = JsonFormatter() if as_json else logging.Formatter("%(message)s")
        self.handler.setFormatter(formatter)
        self.logger = logging.getLogger("llmq.request")

    def __enter__(self) -> Capture:
        self.logger.addHandler(self.handler)
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)

    def lines(self) -> list[str]:
        return [line for line in self.buffer.getvalue().splitlines() if line]


def test_plain_and_json_lines() -> None:
    record = RequestRecord(
        job_id="abc123", route="chat", tenant="acme", model="gpt 4", status=200,
        worker="w1", latency=0.01234, ttft=0.005, prompt_tokens=3, completion_tokens=7,
    )  # fmt: skip
    with Capture(as_json=False) as plain:
        RequestLog(as_json=False).observe(record)
    (line,) = plain.lines()
    assert line.startswith("request request_id=abc123 route=chat tenant=acme")
    assert 'model="gpt 4"' in line and "status=200" in line and "worker=w1" in line
    assert "latency_ms=12.34" in line and "ttft_ms=5.0" in line
    assert "prompt_tokens=3 completion_tokens=7" in line
    with Capture(as_json=True) as js:
        RequestLog(as_json=True).observe(record)
    (line,) = js.lines()
    entry = json.loads(line)
    assert entry["msg"] == "request" and entry["logger"] == "llmq.request"
    assert entry["request_id"] == "abc123" and entry["latency_ms"] == 12.34
    assert entry["model"] == "gpt 4" and entry["completion_tokens"] == 7


def test_client_input_cannot_forge_a_second_line() -> None:
    record = RequestRecord(job_id="x", route="chat", model="m\nrequest request_id=forged")
    with Capture(as_json=False) as plain:
        RequestLog(as_json=False).observe(record)
    assert len(plain.lines()) == 1


@pytest.fixture
async def store(redis_server) -> AsyncIterator[TenantStore]:  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield TenantStore(client)
    await client.aclose()


async def test_one_json_line_per_request_without_secrets(stack, store) -> None:  # type: ignore[no-untyped-def]
    model = unique("ml")
    worker = await stack.worker(model=[model])
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, log_json=True)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    tenant = unique("tl")
    await store.create(Tenant(name=tenant))
    key, _ = await store.create_key(tenant)
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    url = f"{api.url}/v1/chat/completions"
    with Capture(as_json=True) as log:
        async with httpx.AsyncClient(timeout=10) as client:
            ok = await client.post(url, json=body, headers={"authorization": f"Bearer {key}"})
            streamed = await client.post(
                url, json={**body, "stream": True}, headers={"authorization": f"Bearer {key}"}
            )
            denied = await client.post(url, json=body, headers={"authorization": "Bearer sk-nope"})
    assert ok.status_code == 200 and streamed.status_code == 200 and denied.status_code == 401
    lines = log.lines()
    assert len(lines) == 3
    entries = {e["request_id"]: e for e in map(json.loads, lines)}
    first = entries[ok.headers["x-request-id"]]
    assert first["tenant"] == tenant and first["model"] == model and first["route"] == "chat"
    assert first["status"] == 200 and first["worker"] == worker.id
    assert first["stream"] is False and first["latency_ms"] > 0
    assert first["completion_tokens"] == 4 and first["prompt_tokens"] > 0
    second = entries[streamed.headers["x-request-id"]]
    assert second["stream"] is True and second["ttft_ms"] is not None
    third = entries[denied.headers["x-request-id"]]
    assert third["status"] == 401 and third["error"] == "invalid_api_key"
    text = "\n".join(lines)
    assert key not in text and "sk-nope" not in text and PROMPT not in text
    assert "secret" not in text


async def test_traceparent_reaches_the_upstream(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("mt")
    async with FakeUpstream() as upstream:
        upstream.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        upstream.route("/v1/chat/completions", openai_chat(["hi"]))
        api = await stack.api()
        await stack.worker(
            model=[model], backend="openai", backend_url=f"{upstream.url}/v1", api_key_file=""
        )
        await wait_for(lambda: api.runtime.registry.workers_for(model))
        body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{api.url}/v1/chat/completions"
            traced = await client.post(url, json=body, headers={"traceparent": TRACE})
            plain = await client.post(url, json=body)
            bogus = await client.post(url, json=body, headers={"traceparent": "00-not-a-trace"})
        assert traced.status_code == plain.status_code == bogus.status_code == 200
        calls = [r for r in upstream.received if r.path == "/v1/chat/completions"]
        assert [c.headers.get("traceparent") for c in calls] == [TRACE, None, None]


async def test_the_httpx_hook_sends_the_jobs_traceparent() -> None:
    from llmq.worker.tracing import TRACEPARENT, add_traceparent, valid_traceparent

    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("traceparent"))
        return httpx.Response(200)

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(
        transport=transport, event_hooks={"request": [add_traceparent]}
    ) as c:
        await c.get("http://upstream/")
        token = TRACEPARENT.set(valid_traceparent(TRACE.upper()))
        try:
            await c.get("http://upstream/")
        finally:
            TRACEPARENT.reset(token)
    assert seen == [None, TRACE]
    assert valid_traceparent("00-xyz") is None
