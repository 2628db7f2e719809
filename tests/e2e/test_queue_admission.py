"""Queue-aware admission (issue 16, point 2), end to end with the `openai` SDK: once a
model's queue would make a request wait past its first-token deadline, the api answers at
once with a 429 `queue_full` and a `Retry-After` from the estimate, costing the upstream
nothing; a model whose estimated wait is over its `max_queue_wait` falls back; the estimate
shows in /metrics. Real nats-server, Valkey, a slow fake upstream over HTTP."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmq.dispatcher.queue_estimate import estimate_wait
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import FakeUpstream, openai_chat

CHAT = "/v1/chat/completions"


def test_the_wait_formula() -> None:
    assert estimate_wait(0, 0, None) == 0.0
    assert estimate_wait(3, 4, None) == 0.0  # free slots take every queued job
    assert estimate_wait(10, 2, None) is None  # a backlog, no rate measured yet
    assert estimate_wait(10, 2, 2.0) == pytest.approx(4.5)


async def test_a_full_queue_answers_429_queue_full_at_once_or_falls_back(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    primary, spare = unique("qa-main"), unique("qa-spare")
    slow = openai_chat(["done"])
    slow.delay = 0.4
    upstream.route(CHAT, slow)
    table = tmp_path / "models.toml"
    table.write_text(f'[models."{spare}-x"]\nmax_tokens = 10\n')
    api = await stack.api(models_file=str(table))
    worker = await stack.worker(
        model=[primary], backend="openai", backend_url=f"{upstream.url}/v1", capacity=1
    )
    await wait_for(lambda: api.runtime.registry.workers_for(primary))
    await stack.worker(model=[spare])
    await wait_for(lambda: api.runtime.registry.workers_for(spare))
    estimator = api.app.state.queue_estimator
    body = {"model": primary, "messages": [{"role": "user", "content": "hi"}]}

    async with httpx.AsyncClient(timeout=60) as http:
        backlog = [
            asyncio.create_task(
                http.post(f"{api.url}{CHAT}", json=body, headers={"x-llmq-deadline": "60"})
            )
            for _ in range(24)
        ]
        await wait_for(lambda: (estimator.wait_for(primary) or 0) > 1.2, timeout=15)
        client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
        sent = len(upstream.received)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(
                model=primary,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-llmq-deadline": "1"},
            )
        assert time.monotonic() - started < 0.5  # answered at once, not at the deadline
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "queue_full"
        assert int(refused.value.response.headers["retry-after"]) >= 1
        metrics = (await http.get(f"{api.url}/metrics")).text
        line = next(
            m for m in metrics.splitlines()
            if m.startswith("llmq_queue_wait_estimate_seconds") and primary in m
        )  # fmt: skip
        assert float(line.rsplit(" ", 1)[1]) > 0.5

        # the same backlog with fallbacks and a max_queue_wait: served by the spare
        table.write_text(f'[models."{primary}"]\nfallbacks = ["{spare}"]\nmax_queue_wait = 1.0\n')
        stat = table.stat()
        os.utime(table, (stat.st_atime, stat.st_mtime + 1))
        await wait_for(lambda: api.app.state.models.fallbacks_for(primary) == [spare], 5)
        raw = await client.chat.completions.with_raw_response.create(
            model=primary, messages=[{"role": "user", "content": "from the spare"}]
        )
        assert raw.headers["x-llmq-model"] == spare
        assert raw.parse().choices[0].message.content == "from the spare"
        metrics = (await http.get(f"{api.url}/metrics")).text
        assert any(
            m.startswith("llmq_api_fallbacks_total") and 'cause="queue_wait"' in m
            for m in metrics.splitlines()
        )
        assert len([r for r in upstream.received[sent:] if r.path == CHAT]) <= 24
        results = await asyncio.gather(*backlog)
        await client.close()
    assert [r.status_code for r in results] == [200] * 24  # the queued ones all finish
    assert worker.outcomes["ok"] == 24
