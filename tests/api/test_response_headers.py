"""OpenAI's response headers on every answer: `x-request-id` (the job's id where there is a
job, else a fresh `req_` id), `openai-processing-ms`, `openai-version` — on chat, streams,
responses, models, files, batches, conversations, errors, 404s and 405s."""

from __future__ import annotations

import httpx
import openai

from tests.stack import unique, wait_for


def check(resp: httpx.Response) -> str:
    assert resp.headers["openai-version"] == "2020-10-01", resp.request.url
    assert int(resp.headers["openai-processing-ms"]) >= 0
    request_id = resp.headers["x-request-id"]
    assert request_id
    return request_id


async def test_every_answer_carries_openai_headers(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("hdr")
    api = await stack.api()
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    chat = {"model": model, "messages": [{"role": "user", "content": "a b"}]}
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        ids = set()
        for resp in (
            await http.get("/v1/models"),
            await http.get("/v1/files"),
            await http.get("/v1/batches"),
            await http.post("/v1/conversations", json={}),
            await http.get("/v1/nothing-here"),  # 404
            await http.delete("/v1/models"),  # 405
            await http.post("/v1/chat/completions", content=b"{not json"),  # 400
            await http.post("/v1/responses", json={"model": "nobody", "input": "x"}),  # 404
            await http.get("/health"),
        ):
            ids.add(check(resp))
        assert len(ids) == 9  # one id per answer
        whole = await http.post("/v1/chat/completions", json=chat)
        assert check(whole) and whole.status_code == 200
        async with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as s:
            assert check(s) and s.status_code == 200
            await s.aread()
        made = await http.post("/v1/responses", json={"model": model, "input": "x"})
        assert check(made) == made.json()["id"]  # the response's own id
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    raw = await client.models.with_raw_response.list()
    assert raw.headers["x-request-id"].startswith("req_")  # what the SDK shows as request_id
    await client.close()
