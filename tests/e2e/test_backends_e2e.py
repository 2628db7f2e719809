"""Real backends end to end: client → api → JetStream → worker → fake upstream over HTTP.

The fake OpenAI, Ollama and Anthropic servers (tests/worker/backends/fake_upstreams.py) run
in the test's loop; apis and workers are in-process (one test runs a real `llmq worker`).
Covers the issue-3 failure table: upstream 400 → 400 with its message, 401/403 → 502, 429 →
retried elsewhere and finally 429 with Retry-After, 5xx and refused connections retried on
another worker within max_deliver attempts, an error after the first token as an SSE error
event then [DONE], a slow upstream → 504; plus the circuit breaker, cancel reaching the
upstream, usage, completions and embeddings, provider-prefixed model names.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.stack import refused_port, unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    anthropic_events,
    anthropic_stream,
    json_reply,
    ollama_chat,
    openai_chat,
    openai_chunk,
    openai_completion,
    openai_error,
    sse_data,
)

SECRET = "sk-e2e-secret-5f2b8c1d"
CHAT = "/v1/chat/completions"
QUICK = {"breaker_threshold": 100}
"""Retry tests must not trip the breaker: they count upstream attempts."""


@pytest.fixture
async def upstream2() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        server.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        yield server


async def _serve(stack: Any, api: Any, model: str, url: str, **overrides: Any) -> Any:
    """A worker of the openai backend in front of `url`, visible to `api`."""
    values: dict[str, Any] = {"model": [model], "backend": "openai", "backend_url": url}
    values.update(overrides)
    worker = await stack.worker(**values)
    await wait_for(
        lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(_public(model))}
    )
    return worker


def _public(spec: str) -> str:
    return spec.partition("=")[0]


def _client(api: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


async def _sse(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[str]:
    events: list[str] = []
    async with client.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    return events


def _chat(model: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


# --- happy paths -----------------------------------------------------------------------------


async def test_openai_backend_stream_and_usage_with_key_and_headers(
    upstream: FakeUpstream, stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`openai:` prefixed public name mapped to an upstream name; key from a named env var;
    extra headers; usage from the upstream, and counted when the upstream sends none."""
    monkeypatch.setenv("E2E_UPSTREAM_KEY", SECRET)
    public = unique("openai:gpt-4o-mini")
    upstream.route(CHAT, openai_chat(["Hel", "lo"], usage=(11, 2)))
    api = await stack.api()
    worker = await _serve(
        stack, api, f"{public}=gpt-4o-mini", f"{upstream.url}/v1",
        api_key_env="E2E_UPSTREAM_KEY",
        backend_header=["OpenAI-Organization: org-e2e", "X-Title: llmq"],
    )  # fmt: skip
    assert SECRET not in repr(worker.backend_config) and SECRET not in repr(worker.info())
    client = _client(api)
    stream = await client.chat.completions.create(
        model=public,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert all(c.model == public for c in chunks)
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 2)
    sent = upstream.last
    assert sent.json()["model"] == "gpt-4o-mini" and sent.json()["stream"] is True
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.headers["openai-organization"] == "org-e2e"
    assert sent.headers["x-title"] == "llmq"

    upstream.route(CHAT, openai_chat(["one", " two", " three"], usage=None))
    resp = await client.chat.completions.create(
        model=public, messages=[{"role": "user", "content": "count these words"}]
    )
    assert resp.choices[0].message.content == "one two three"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 3 and resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 3
    await client.close()


async def test_traceparent_reaches_the_upstream(upstream: FakeUpstream, stack: Any) -> None:
    model = unique("m")
    upstream.route(CHAT, openai_chat(["ok"]))
    api = await stack.api()
    await _serve(stack, api, model, f"{upstream.url}/v1")
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(
            f"{api.url}{CHAT}", json=_chat(model), headers={"traceparent": trace}
        )
        assert resp.status_code == 200
        assert upstream.last.headers["traceparent"] == trace
        await http.post(f"{api.url}{CHAT}", json=_chat(model))
    assert "traceparent" not in upstream.last.headers


async def test_ollama_prefixed_model_name(upstream: FakeUpstream, stack: Any) -> None:
    public = unique("ollama:qwen2.5")
    upstream.route("/api/chat", ollama_chat(["Hi", " there"], prompt_eval_count=7, eval_count=2))
    api = await stack.api()
    await _serve(
        stack, api, f"{public}=qwen2.5", upstream.url, backend="ollama", ollama_keep_alive="-1"
    )
    client = _client(api)
    resp = await client.chat.completions.create(
        model=public, messages=[{"role": "user", "content": "hey"}]
    )
    await client.close()
    assert resp.model == public
    assert resp.choices[0].message.content == "Hi there"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (7, 2)
    assert upstream.last.json()["model"] == "qwen2.5"
    assert upstream.last.json()["keep_alive"] == -1


async def test_completions_and_embeddings_through_the_openai_backend(
    upstream: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    upstream.route("/v1/completions", openai_completion(["Once", " upon"], usage=(3, 2)))
    vectors = [[0.5, -1.0, 0.25], [1.0, 0.0, 2.0]]
    upstream.route(
        "/v1/embeddings",
        json_reply(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 1, "embedding": vectors[1]},
                    {"object": "embedding", "index": 0, "embedding": vectors[0]},
                ],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 6, "total_tokens": 6},
            },
        ),
    )
    api = await stack.api()
    await _serve(stack, api, f"{model}=upstream-model", f"{upstream.url}/v1")
    client = _client(api)
    done = await client.completions.create(model=model, prompt="tell me", max_tokens=5)
    assert done.object == "text_completion"
    assert done.choices[0].text == "Once upon"
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (
        3,
        2,
    )
    assert upstream.last.json()["model"] == "upstream-model"
    assert upstream.last.json()["prompt"] == "tell me"
    stream = await client.completions.create(model=model, prompt="tell me", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "Once upon"

    emb = await client.embeddings.create(model=model, input=["a b", "c d e f"])
    assert [d.embedding for d in emb.data] == vectors
    assert emb.usage.prompt_tokens == 6
    assert upstream.last.path == "/v1/embeddings"
    assert upstream.last.json() == {"model": "upstream-model", "input": ["a b", "c d e f"]}
    async with httpx.AsyncClient(timeout=10) as http:
        raw = await http.post(
            f"{api.url}/v1/embeddings",
            json={"model": model, "input": "a b", "encoding_format": "base64"},
        )
    assert raw.status_code == 200, raw.text
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == vectors[0]
    await client.close()


async def test_anthropic_chat_and_a_clear_400_for_embeddings(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    model = unique("anthropic:claude")
    key_file = tmp_path / "anthropic.key"
    key_file.write_text(SECRET + "\n")
    upstream.route("/v1/messages", anthropic_stream(anthropic_events(["Bon", "jour"])))
    api = await stack.api()
    worker = await _serve(
        stack, api, f"{model}=claude-sonnet-4-5", upstream.url,
        backend="anthropic", api_key_file=str(key_file),
    )  # fmt: skip
    await wait_for(lambda: api.runtime.registry.model_info(model) is not None)
    assert api.runtime.registry.model_info(model).kinds == ["chat", "message"]
    client = _client(api)
    resp = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "salut"}]
    )
    assert resp.choices[0].message.content == "Bonjour"
    assert resp.usage is not None and resp.usage.prompt_tokens == 25
    assert upstream.last.headers["x-api-key"] == SECRET
    assert upstream.last.json()["model"] == "claude-sonnet-4-5"
    calls = len(upstream.received)
    with pytest.raises(openai.BadRequestError) as err:
        await client.embeddings.create(model=model, input="x")
    assert "does not support embedding" in err.value.message
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model=model, prompt="x")
    assert len(upstream.received) == calls  # refused by the api, never queued
    assert worker.outcomes == {"ok": 1}
    await client.close()


# --- upstream errors -------------------------------------------------------------------------


async def test_upstream_400_reaches_the_client_with_its_message(
    upstream: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    message = "This model's maximum context length is 8192 tokens."
    upstream.route(
        CHAT, openai_error(400, message, code="context_length_exceeded", param="messages")
    )
    api = await stack.api()
    worker = await _serve(stack, api, model, f"{upstream.url}/v1", **QUICK)
    client = _client(api)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 400
    assert err.value.body["message"] == message  # type: ignore[index]
    assert err.value.code == "context_length_exceeded"
    assert err.value.param == "messages"
    with pytest.raises(openai.BadRequestError):  # streaming: a plain 400 too, no SSE
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert len(upstream.received) == 2  # never retried
    assert worker.breaker.failures == 0
    await client.close()


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_auth_failure_is_a_502_without_its_text(
    upstream: FakeUpstream, stack: Any, status: int
) -> None:
    model = unique("m")
    upstream.route(
        CHAT, openai_error(status, f"Incorrect API key provided: sk-e2e-***{SECRET[-4:]}")
    )
    api = await stack.api()
    await _serve(stack, api, model, f"{upstream.url}/v1", **QUICK)
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(f"{api.url}{CHAT}", json=_chat(model))
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_auth_failed"
    assert SECRET[-4:] not in error["message"]
    assert len(upstream.received) == 1


async def test_429_everywhere_gives_429_with_retry_after(
    upstream: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    upstream.route(
        CHAT,
        openai_error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                     headers={"retry-after": "7"}),
    )  # fmt: skip
    api = await stack.api()
    worker = await _serve(stack, api, model, f"{upstream.url}/v1", **QUICK)
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(f"{api.url}{CHAT}", json=_chat(model))
    assert resp.status_code == 429, resp.text
    assert resp.headers["retry-after"] == "7"
    assert resp.json()["error"]["message"] == "Rate limit reached for requests"
    assert len(upstream.received) == worker.settings.protocol.max_deliver == 3
    assert worker.outcomes == {"retried": 2, "upstream_error": 1}


async def test_429_is_retried_on_another_worker(
    upstream: FakeUpstream, upstream2: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    upstream.route(CHAT, openai_error(429, "slow down", headers={"retry-after": "1"}))
    upstream2.route(CHAT, openai_chat(["fine"]))
    api = await stack.api()
    limited = await _serve(stack, api, model, f"{upstream.url}/v1", capacity=1, **QUICK)
    healthy = await _serve(stack, api, model, f"{upstream2.url}/v1", capacity=1, **QUICK)
    results = await _sequential(api, model, 6)
    assert results == ["fine"] * 6
    assert limited.outcomes.get("retried", 0) == len(upstream.received) >= 1
    assert healthy.outcomes["ok"] == 6


async def _sequential(api: Any, model: str, n: int, stream: bool = False) -> list[str]:
    """n requests one after the other; the answer text of each (or its status)."""
    out = []
    async with httpx.AsyncClient(timeout=15) as http:
        for _ in range(n):
            if stream:
                events = await _sse(http, f"{api.url}{CHAT}", _chat(model, stream=True))
                text = "".join(
                    (json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                    for e in events[:-1]
                )
                out.append(text)
                continue
            resp = await http.post(f"{api.url}{CHAT}", json=_chat(model))
            out.append(
                resp.json()["choices"][0]["message"]["content"]
                if resp.status_code == 200
                else str(resp.status_code)
            )
    return out


async def test_5xx_and_refused_connections_are_retried_on_another_worker(
    upstream: FakeUpstream, upstream2: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    upstream.route(CHAT, openai_error(503, "overloaded", "server_error"))
    upstream2.route(CHAT, openai_chat(["ok"]))
    api = await stack.api()
    failing = await _serve(stack, api, model, f"{upstream.url}/v1", capacity=1, **QUICK)
    refused = await _serve(
        stack, api, model, f"http://127.0.0.1:{refused_port()}/v1", capacity=1, **QUICK
    )
    healthy = await _serve(stack, api, model, f"{upstream2.url}/v1", capacity=1, **QUICK)
    assert await _sequential(api, model, 4, stream=True) == ["ok"] * 4
    assert await _sequential(api, model, 4) == ["ok"] * 4
    assert healthy.outcomes["ok"] == 8
    assert failing.outcomes.get("retried", 0) + refused.outcomes.get("retried", 0) >= 1
    assert set(failing.outcomes) <= {"retried"} and set(refused.outcomes) <= {"retried"}


async def test_attempts_are_bounded_by_max_deliver_then_502(
    upstream: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    upstream.route(CHAT, openai_error(500, "The server had an error", "server_error"))
    api = await stack.api()
    worker = await _serve(stack, api, model, f"{upstream.url}/v1", max_deliver=2, **QUICK)
    async with httpx.AsyncClient(timeout=10) as http:
        started = time.monotonic()
        resp = await http.post(f"{api.url}{CHAT}", json=_chat(model))
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_unavailable"
    # A backend's 5xx reaches the client with a generic message (it may name internal
    # addresses); the api logs the upstream's own text.
    assert resp.json()["error"]["message"] == "The model backend could not be reached or failed."
    assert len(upstream.received) == 2
    assert worker.outcomes == {"retried": 1, "upstream_error": 1}
    assert time.monotonic() - started < 2.0


async def test_error_after_the_first_token_is_an_sse_error_then_done(
    upstream: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    chunks = sse_data(
        [openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"content": "par"}),
         openai_chunk({"content": "tial"})],
        done=False,
    )  # fmt: skip
    upstream.route(CHAT, Reply(chunks=chunks, content_type="text/event-stream", drop_after=2))
    api = await stack.api()
    worker = await _serve(stack, api, model, f"{upstream.url}/v1", **QUICK)
    async with httpx.AsyncClient(timeout=10) as http:
        events = await _sse(http, f"{api.url}{CHAT}", _chat(model, stream=True))
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] in ("upstream_disconnected", "upstream_unavailable")
    text = "".join(
        (json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in events[:-2]
    )
    assert text == "par"
    assert len(upstream.received) == 1  # past the first token: never retried
    assert worker.outcomes == {"upstream_error": 1}


async def test_slow_upstream_is_a_504(upstream: FakeUpstream, stack: Any) -> None:
    model = unique("m")
    slow = openai_chat(["late"])
    slow.delay = 3.0
    upstream.route(CHAT, slow)
    api = await stack.api()
    await _serve(
        stack, api, model, f"{upstream.url}/v1",
        backend_first_token_timeout=0.5, backend_timeout=1.0, **QUICK,
    )  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as http:
        started = time.monotonic()
        streamed = await http.post(f"{api.url}{CHAT}", json=_chat(model, stream=True))
        assert streamed.status_code == 504
        assert streamed.json()["error"]["code"] == "upstream_timeout"
        assert "first token within 0.5s" in streamed.json()["error"]["message"]
        # a non-streamed call shows no token before its end: the total bound applies
        resp = await http.post(f"{api.url}{CHAT}", json=_chat(model))
        assert resp.status_code == 504
        assert resp.json()["error"]["code"] == "upstream_timeout"
        assert "longer than 1s" in resp.json()["error"]["message"]
    assert time.monotonic() - started < 3.5


# --- circuit breaker, cancel -----------------------------------------------------------------


async def test_circuit_opens_jobs_go_elsewhere_then_it_closes(
    upstream: FakeUpstream, upstream2: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    upstream.route(CHAT, openai_error(500, "down", "server_error"))
    upstream.route("/v1/models", openai_error(503, "down", "server_error"))
    upstream2.route(CHAT, openai_chat(["ok"]))
    api = await stack.api()
    sick = await _serve(
        stack, api, model, f"{upstream.url}/v1",
        capacity=1, breaker_threshold=2, breaker_probe_interval=0.2,
    )  # fmt: skip
    healthy = await _serve(stack, api, model, f"{upstream2.url}/v1", capacity=1)

    def circuit() -> str | None:
        for w in api.runtime.registry.live_workers():
            if w.id == sick.id:
                return w.circuit
        return None

    async def ready() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"{api.url}/ready")).json()  # type: ignore[no-any-return]

    for _ in range(12):
        assert await _sequential(api, model, 1) == ["ok"]
        if sick.breaker.state == "open":
            break
    assert sick.breaker.state == "open"
    assert len(upstream.received) >= 2
    await wait_for(lambda: circuit() == "open", timeout=3)
    assert sick.id in (await ready())["circuits_open"]

    tried = sum(1 for r in upstream.received if r.path == CHAT)
    assert await _sequential(api, model, 5) == ["ok"] * 5
    assert sum(1 for r in upstream.received if r.path == CHAT) == tried  # no job went there
    await wait_for(lambda: any(r.path == "/v1/models" for r in upstream.received), 2)  # probes

    upstream.route(CHAT, openai_chat(["back"]))
    upstream.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
    await wait_for(lambda: circuit() == "closed", timeout=5)
    assert (await ready())["circuits_open"] == []
    answers = set(await _sequential(api, model, 8))
    assert answers <= {"ok", "back"}
    assert sick.outcomes.get("ok", 0) >= 1 or "back" in answers
    assert healthy.outcomes["ok"] >= 6


async def test_client_disconnect_closes_the_upstream_request(
    upstream: FakeUpstream, stack: Any
) -> None:
    model = unique("m")
    chunks = sse_data(
        [openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"content": "Hi"}),
         openai_chunk({"content": " never"})],
    )  # fmt: skip
    upstream.route(CHAT, Reply(chunks=chunks, content_type="text/event-stream", hang_after=2))
    api = await stack.api()
    worker = await _serve(stack, api, model, f"{upstream.url}/v1")
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("POST", f"{api.url}{CHAT}", json=_chat(model, stream=True)) as resp:
            async for line in resp.aiter_lines():
                if "Hi" in line:
                    break
            assert not upstream.disconnected.is_set()
    left = time.monotonic()
    await asyncio.wait_for(upstream.disconnected.wait(), 2.0)
    assert upstream.disconnected_at is not None and upstream.disconnected_at - left < 1.0
    await wait_for(lambda: worker.outcomes.get("cancelled") == 1, timeout=2)


# --- the real command --------------------------------------------------------------------------


async def test_llmq_worker_command_with_key_env_and_headers(
    upstream: FakeUpstream, stack: Any
) -> None:
    public = unique("ollama:llama3.2")
    upstream.route(CHAT, openai_chat(["from", " vllm"], usage=(4, 2)))
    api = await stack.api()
    proc = stack.process(
        "worker", "--backend", "openai", "--backend-url", f"{upstream.url}/v1",
        "--model", f"{public}=meta-llama/Llama-3.2-1B-Instruct",
        "--api-key-env", "LLMQ_E2E_VLLM_KEY",  # env_for prefixes LLMQ_
        "--backend-header", "X-Tenant-Route: blue", "--backend-header", "X-Extra: 1, 2",
        "--backend-first-token-timeout", "5",
        E2E_VLLM_KEY=SECRET,
    )  # fmt: skip
    await wait_for(lambda: api.runtime.registry.workers_for(public), timeout=15)
    client = _client(api)
    resp = await client.chat.completions.create(
        model=public, messages=[{"role": "user", "content": "hi"}]
    )
    await client.close()
    assert resp.choices[0].message.content == "from vllm"
    assert resp.usage is not None and resp.usage.total_tokens == 6
    sent = upstream.last
    assert sent.json()["model"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.headers["x-tenant-route"] == "blue" and sent.headers["x-extra"] == "1, 2"
    assert proc.stop() == 0
    log = proc.log_path.read_text()
    assert "with an API key" in log and "X-Tenant-Route" in log
    assert SECRET not in log


async def test_llmq_worker_command_fails_clearly_without_its_key(stack: Any) -> None:
    proc = stack.process(
        "worker", "--backend", "anthropic", "--api-key-env", "E2E_MISSING_KEY", "--model", "x"
    )
    code = await asyncio.to_thread(proc.proc.wait, 15)
    assert code == 2
    assert "E2E_MISSING_KEY" in proc.output()
    assert "Traceback" not in proc.output()
