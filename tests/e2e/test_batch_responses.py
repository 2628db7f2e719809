"""Batches of Responses requests (`endpoint: /v1/responses`) through the official SDK: each
line runs as a whole, unstored `response` job and its output line holds the Response; a
line that needs stored history (`previous_response_id`) is a line error."""

from __future__ import annotations

import asyncio
import json
import time

import openai

from tests.spec import assert_valid
from tests.stack import unique, wait_for

RESPONSES = "/v1/responses"


async def test_a_batch_of_responses(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("br")
    api = await stack.api()
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": RESPONSES,
         "body": {"model": model, "input": f"hello {i}", "max_output_tokens": 8}}
        for i in range(3)
    ]  # fmt: skip
    chained = {"model": model, "input": "x", "previous_response_id": "resp_1"}
    lines.append({"custom_id": "chained", "method": "POST", "url": RESPONSES, "body": chained})
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    uploaded = await sdk.files.create(file=("r.jsonl", data), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint=RESPONSES, completion_window="24h"
    )
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
    assert batch.output_file_id and batch.error_file_id
    output = [
        json.loads(x) for x in (await sdk.files.content(batch.output_file_id)).text.splitlines()
    ]
    for line in output:
        body = line["response"]["body"]
        assert_valid("Response", body)
        number = line["custom_id"].removeprefix("r")
        assert body["output"][0]["content"][0]["text"] == f"hello {number}"
        assert body["store"] is False
    errors = [
        json.loads(x) for x in (await sdk.files.content(batch.error_file_id)).text.splitlines()
    ]
    assert [e["custom_id"] for e in errors] == ["chained"]
    assert "previous_response_id" in json.dumps(errors[0])
    await sdk.close()
