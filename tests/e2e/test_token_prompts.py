"""`/v1/completions` takes token-id prompts (a list of ints, a list of such lists) as OpenAI
and vLLM do: passed to an openai-compatible upstream as they came, counted exactly for the
reservation; a mixed or malformed prompt is a 400."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import openai_completion

COMPLETIONS = "/v1/completions"


@pytest.fixture
async def served(stack, upstream):  # type: ignore[no-untyped-def]
    model = unique("tok")
    api = await stack.api()
    worker = await stack.worker(model=[model], backend="openai", backend_url=f"{upstream.url}/v1")
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
    upstream.route(COMPLETIONS, openai_completion(["Once", " upon"], usage=(3, 2)))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    yield model, client, api
    await client.close()


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2, 3], [4, 5]]])
async def test_token_id_prompts_reach_the_upstream(served, upstream, prompt) -> None:  # type: ignore[no-untyped-def]
    model, client, _api = served
    resp = await client.completions.create(model=model, prompt=prompt, max_tokens=5)
    assert resp.choices[0].text == "Once upon"
    assert_valid("CreateCompletionResponse", resp.model_dump(exclude_unset=True))
    assert upstream.last.json()["prompt"] == prompt
    stream = await client.completions.create(model=model, prompt=prompt, stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "Once upon"


async def test_malformed_prompts_are_400(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, _client, api = served
    asked = len(upstream.received)
    async with httpx.AsyncClient(base_url=api.url) as http:
        for prompt in ([1, "two"], [[1], "x"], [[]], [1.5], [True, False]):
            resp = await http.post(COMPLETIONS, json={"model": model, "prompt": prompt})
            assert resp.status_code == 400, (prompt, resp.text)
            assert "prompt" in resp.json()["error"]["message"]
    assert len(upstream.received) == asked


async def test_the_echo_backend_takes_token_ids(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("tok")
    api = await stack.api()
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0) as c:
        resp = await c.completions.create(model=model, prompt=[7, 8])
    assert resp.choices[0].text == "7 8"
