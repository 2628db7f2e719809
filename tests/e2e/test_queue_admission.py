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

from llmq.dispatcher.queue_estimate import assumed_rate, estimate_wait
from llmq.schemas.registry import WorkerInfo
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


def test_a_model_without_a_measured_rate_uses_the_job_time() -> None:
    def worker(**extra: Any) -> WorkerInfo:
        return WorkerInfo(id=unique("w"), backend="openai", models=["m"], capacity=2, **extra)

    assert assumed_rate([worker()], "m") is None  # nothing known: the wait stays unknown
    assert assumed_rate([worker()], "m", 4.0) == pytest.approx(0.5)  # max_tokens / tokens/s
    reported = worker(job_seconds={"m": 1.0})
    assert assumed_rate([reported, worker(draining=True)], "m", 4.0) == pytest.approx(2.0)
    assert assumed_rate([reported, worker()], "m", 4.0) == pytest.approx(2.5)


def _burst_stack_models(table: Path, primary: str, spare: str) -> None:
    table.write_text(
        f'[models."{primary}"]\nmax_tokens = 30\nfallbacks = ["{spare}"]\nmax_queue_wait = 0.5\n'
    )


async def _timed(call: Any) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        return time.monotonic() - started, await call
    except openai.APIStatusError as exc:
        return time.monotonic() - started, exc


async def test_a_burst_on_a_cold_model_falls_back_at_once(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    """Five simultaneous requests to a capacity-1 model (3 s a request) that never ran a job,
    with `max_queue_wait = 0.5` and a fallback: the burst arrives inside one refresh of the
    queue figures, yet all but the first few fall back at once. The model's job time is its
    `max_tokens` (30) at `queue_tokens_per_second` (10): 3 s."""
    primary, spare = unique("burst-main"), unique("burst-spare")
    slow = openai_chat(["slow"])
    slow.delay = 3.0
    upstream.route(CHAT, slow)
    table = tmp_path / "models.toml"
    _burst_stack_models(table, primary, spare)
    api = await stack.api(models_file=str(table), queue_tokens_per_second=10.0)
    await stack.worker(
        model=[primary], backend="openai", backend_url=f"{upstream.url}/v1", capacity=1
    )
    await stack.worker(model=[spare])
    await wait_for(lambda: api.runtime.registry.workers_for(primary))
    await wait_for(lambda: api.runtime.registry.workers_for(spare))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    calls = [
        _timed(
            client.chat.completions.with_raw_response.create(
                model=primary, messages=[{"role": "user", "content": f"burst {i}"}]
            )
        )
        for i in range(5)
    ]
    results = await asyncio.gather(*calls)
    await client.close()
    served_by = [(elapsed, raw.headers["x-llmq-model"]) for elapsed, raw in results]
    fell_back = [elapsed for elapsed, model in served_by if model == spare]
    assert len(fell_back) >= 3, served_by
    assert max(fell_back) < 2.5, served_by  # at once, not behind a 3 s job
    assert all(raw.parse().choices[0].message.content for _, raw in results)


async def test_a_deadline_burst_gets_429_queue_full_at_once(
    upstream: FakeUpstream, stack: Any
) -> None:
    """Six simultaneous requests with `X-Llmq-Deadline: 2` to a capacity-1 model whose
    worker reported a 3 s job time: the first runs, the others get 429 `queue_full` at
    once — none waits for its deadline to end in a 504."""
    primary = unique("burst-dl")
    slow = openai_chat(["slow"])
    slow.delay = 3.0
    upstream.route(CHAT, slow)
    api = await stack.api()
    await stack.worker(
        model=[primary], backend="openai", backend_url=f"{upstream.url}/v1", capacity=1
    )
    await wait_for(lambda: api.runtime.registry.workers_for(primary))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    warm = await client.chat.completions.create(
        model=primary, messages=[{"role": "user", "content": "warm up"}]
    )
    assert warm.choices[0].message.content == "slow"
    await wait_for(  # the next heartbeat reports the job time
        lambda: any(w.job_seconds.get(primary) for w in api.runtime.registry.workers_for(primary))
    )
    calls = [
        _timed(
            client.chat.completions.create(
                model=primary,
                messages=[{"role": "user", "content": f"burst {i}"}],
                extra_headers={"x-llmq-deadline": "2"},
            )
        )
        for i in range(6)
    ]
    results = await asyncio.gather(*calls)
    await client.close()
    refused = [(t, r) for t, r in results if isinstance(r, openai.APIStatusError)]
    assert all(r.status_code == 429 for _, r in refused), [(t, r.status_code) for t, r in refused]
    assert all(isinstance(r.body, dict) and r.body["code"] == "queue_full" for _, r in refused)
    assert all(t < 1.5 for t, _ in refused), [t for t, _ in refused]  # at once
    assert len(refused) >= 5  # one slot, 3 s a job: only the first starts within 2 s
