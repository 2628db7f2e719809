"""`LLMQ_GC_FREEZE_THRESHOLD`: after start-up the api freezes its heap and collects the
youngest generation less often; it serves as before, and puts the collector back at
shutdown. A real api, nats-server and Valkey, the `openai` SDK."""

from __future__ import annotations

import gc
from typing import Any

import openai

from tests.stack import unique, wait_for


async def test_the_api_freezes_its_start_up_heap_and_serves(stack: Any) -> None:
    before = gc.get_threshold()
    api = await stack.api(gc_freeze_threshold=5_000)
    try:
        assert gc.get_threshold() == (5_000, before[1], before[2])
        assert gc.get_freeze_count() > 1_000  # the start-up heap is out of the collections
        model = unique("gc")
        await stack.worker(model=[model])
        await wait_for(lambda: api.runtime.registry.workers_for(model))
        client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "still served"}]
        )
        await client.close()
        assert reply.choices[0].message.content
    finally:
        await api.stop()
        stack.apis.remove(api)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_off_by_default(stack: Any) -> None:
    before = gc.get_threshold()
    await stack.api()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
