"""Batches and jobs checked against OpenAI's OpenAPI document (issue 10): every Batch object
(create, retrieve, list, cancel) validates as `Batch` / `ListBatchesResponse`; every line of
an output or error file has OpenAI's batch output shape (`BatchRequestOutput`, which the
document does not name: written out below from OpenAI's batch guide) and its response body
validates as the endpoint's response; a job's stored `result` validates as the response of
its endpoint. For echo and for a translating backend (Anthropic, a fake server over HTTP)."""

from __future__ import annotations

from typing import Any

import httpx
from jsonschema import Draft202012Validator

from tests.e2e.test_batches import (
    CHAT,
    batch_file,
    jsonl,
    request_line,
    results_of,
    start_batch,
    wait_batch,
)
from tests.e2e.test_jobs import chat, wait_job
from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    anthropic_events,
    anthropic_stream,
)

OUTPUT_LINE = Draft202012Validator(
    {
        "type": "object",
        "required": ["id", "custom_id", "response", "error"],
        "properties": {
            "id": {"type": "string"},
            "custom_id": {"type": ["string", "null"]},
            "response": {
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["status_code", "request_id", "body"],
                        "properties": {
                            "status_code": {"type": "integer"},
                            "request_id": {"type": "string"},
                            "body": {"type": "object"},
                        },
                    },
                ]
            },
            "error": {
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    },
                ]
            },
        },
    }
)
RESPONSE_OF = {CHAT: "CreateChatCompletionResponse", "/v1/embeddings": "CreateEmbeddingResponse"}


def assert_output_lines(lines: list[dict[str, Any]], endpoint: str = CHAT) -> None:
    for line in lines:
        problems = [e.message for e in OUTPUT_LINE.iter_errors(line)]
        assert not problems, (line, problems)
        response = line["response"]
        if response is not None and response["status_code"] == 200:
            assert_valid(RESPONSE_OF[endpoint], response["body"])
        elif response is not None:
            assert_valid("ErrorResponse", response["body"])


async def _batch_round(client: httpx.AsyncClient, model: str) -> None:
    """A batch with good and bad lines: every Batch object and every output line checked."""
    data, _ = batch_file(model, 3)
    data += jsonl([request_line("bad-body", model, "x", temperature="hot")])
    created = await start_batch(client, data)
    assert_valid("Batch", created)
    assert_valid("Batch", (await client.get(f"/v1/batches/{created['id']}")).json())
    batch = await wait_batch(client, created["id"])
    assert batch["status"] == "completed", batch
    assert_valid("Batch", batch)
    listed = (await client.get("/v1/batches", params={"limit": 5})).json()
    assert_valid("ListBatchesResponse", listed)
    assert created["id"] in {b["id"] for b in listed["data"]}
    output, errors = await results_of(client, batch)
    assert len(output) == 3 and len(errors) == 1
    assert_output_lines(output + errors)


async def test_echo_batches_and_jobs_are_spec_valid(stack: Any) -> None:
    model = unique("spec")
    api = await stack.api()
    worker = await stack.worker(model=[model], capacity=2, echo_delay=0.05)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        await _batch_round(client, model)

        # cancel: the cancelling batch and the cancelled one, and the lines it left
        data, _ = batch_file(model, 12, words=4)
        batch = await start_batch(client, data)
        await wait_for(lambda: worker.outcomes.get("ok", 0) >= 5, timeout=15)
        cancelling = await client.post(f"/v1/batches/{batch['id']}/cancel")
        assert cancelling.status_code == 200
        assert_valid("Batch", cancelling.json())
        cancelled = await wait_batch(client, batch["id"])
        assert cancelled["status"] == "cancelled"
        assert_valid("Batch", cancelled)
        output, errors = await results_of(client, cancelled)
        assert_output_lines(output + errors)

        # jobs: the stored result is the endpoint's response (chat, streamed or not; embeddings)
        for body in (chat(model, "later please"), chat(model, "as a stream", stream=True)):
            job = (await client.post("/v1/jobs", json=body)).json()
            done = await wait_job(client, job["id"])
            assert done["status"] == "completed", done
            assert_valid("CreateChatCompletionResponse", done["result"])
        embed = {"endpoint": "/v1/embeddings", "model": model, "input": ["a", "b"]}
        job = (await client.post("/v1/jobs", json=embed)).json()
        done = await wait_job(client, job["id"])
        assert_valid("CreateEmbeddingResponse", done["result"])


async def test_translating_backend_batches_and_jobs_are_spec_valid(stack: Any) -> None:
    model = unique("spec-claude")
    async with FakeUpstream() as upstream:
        upstream.route("/v1/messages", anthropic_stream(anthropic_events(["Par", "is"])))
        api = await stack.api()
        worker = await stack.worker(
            model=[f"{model}=claude-sonnet-4-5"],
            backend="anthropic",
            backend_url=upstream.url,
            api_key_file="",
        )
        await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            await _batch_round(client, model)
            job = (await client.post("/v1/jobs", json=chat(model, "capital?"))).json()
            done = await wait_job(client, job["id"])
            assert done["status"] == "completed", done
            assert done["result"]["choices"][0]["message"]["content"] == "Paris"
            assert_valid("CreateChatCompletionResponse", done["result"])
