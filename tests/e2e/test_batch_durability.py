"""Every request of a batch exactly once in the output or error file, with real process
kills: a worker SIGKILLed mid-batch, the api SIGKILLed and replaced mid-batch, nats-server
SIGKILLed and restarted on its file storage, and several api replicas running batches at
once."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx

from tests.e2e.test_batches import (
    assert_exactly_once,
    batch_file,
    results_of,
    start_batch,
    wait_batch,
)
from tests.stack import unique, wait_for, wait_serving

BATCH = {"batch_lease": 2.0, "batch_stall": 3.0}
"""Short lease and stall timings (the api's side of FAST)."""


async def completed(client: httpx.AsyncClient, batch_id: str) -> int:
    try:
        resp = await client.get(f"/v1/batches/{batch_id}")
    except httpx.HTTPError:
        return 0
    if resp.status_code != 200:
        return 0
    counts: dict[str, Any] = resp.json()["request_counts"]
    return int(counts["completed"])


async def test_worker_sigkill_mid_batch(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("b")
    api = await stack.api(**BATCH)
    doomed = stack.process("worker", "--model", model, "--capacity", "4", "--echo-delay", "0.05")
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    data, expected = batch_file(model, 40, words=4)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, data)
        await wait_for(lambda: completed(client, batch["id"]), timeout=15)
        doomed.signal(signal.SIGKILL)  # mid-batch: jobs running and queued
        doomed.proc.wait(5)
        assert await completed(client, batch["id"]) < 40
        await stack.worker(model=[model], capacity=4, echo_delay=0.05)
        batch = await wait_batch(client, batch["id"], timeout=30)
        output, errors = await results_of(client, batch)
    assert batch["status"] == "completed"
    assert_exactly_once(batch, output, errors, expected)
    assert not errors  # the killed worker's jobs were delivered again


async def test_api_sigkill_mid_batch_and_replacement(stack) -> None:  # type: ignore[no-untyped-def]
    """The only api dies mid-batch; results keep arriving on disk while no api runs; a new
    api takes the batch over after one lease and finishes it. An async job submitted to the
    dead api completes too."""
    model = unique("b")
    await stack.worker(model=[model], capacity=2, echo_delay=0.05)
    # At most 8 lines queued at a time: the dead api leaves most of the batch undispatched.
    doomed = await stack.api_process(batch_max_inflight=8, **BATCH)
    url = doomed.url
    data, expected = batch_file(model, 40, words=4)
    await wait_serving(url, model)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        batch = await start_batch(client, data)
        job = await client.post(
            "/v1/jobs", json={"model": model, "messages": [{"role": "user", "content": "x y"}]}
        )
        assert job.status_code == 202
        await wait_for(lambda: completed(client, batch["id"]), timeout=15)
    doomed.signal(signal.SIGKILL)
    doomed.proc.wait(5)
    await asyncio.sleep(1.0)  # the worker keeps answering into LLMQ_OUTCOMES meanwhile
    api = await stack.api(batch_max_inflight=8, **BATCH)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        assert await completed(client, batch["id"]) < 40
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await wait_batch(client, batch["id"], timeout=30)
        output, errors = await results_of(client, batch)
        job_state = (await client.get(f"/v1/jobs/{job.json()['id']}")).json()
    assert batch["status"] == "completed"
    assert_exactly_once(batch, output, errors, expected)
    assert not errors
    assert api.app.state.batches.runner.finalized == 1
    assert job_state["status"] == "completed"


async def test_several_api_replicas_run_batches_at_once(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("b")
    apis = [await stack.api(**BATCH) for _ in range(3)]
    await stack.worker(model=[model], capacity=8, echo_delay=0.01)
    for api in apis:
        await wait_for(lambda api=api: api.runtime.registry.workers_for(model))
    batches = []
    async with httpx.AsyncClient(timeout=10) as client:
        for i, api in enumerate(apis):
            client.base_url = httpx.URL(api.url)
            data, expected = batch_file(model, 30, words=2)
            data = data.replace(b'"req-', f'"a{i}-req-'.encode())
            expected = {f"a{i}-{k}": v for k, v in expected.items()}
            batches.append((await start_batch(client, data), expected))
        for n, (batch, expected) in enumerate(batches):
            client.base_url = httpx.URL(apis[(n + 1) % 3].url)  # read through another replica
            done = await wait_batch(client, batch["id"], timeout=30)
            output, errors = await results_of(client, done)
            assert done["status"] == "completed"
            assert_exactly_once(done, output, errors, expected)
    assert sum(api.app.state.batches.runner.finalized for api in apis) == 3


async def test_nats_server_sigkill_mid_batch(own_nats, stack) -> None:  # type: ignore[no-untyped-def]
    stack.nats_url = own_nats.url
    model = unique("b")
    api = await stack.api(**BATCH)
    await stack.worker(model=[model], capacity=4, echo_delay=0.05)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    data, expected = batch_file(model, 40, words=4)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, data)
        await wait_for(lambda: completed(client, batch["id"]), timeout=15)
        assert await completed(client, batch["id"]) < 40
        await asyncio.to_thread(own_nats.restart, crash=True)
        await wait_for(lambda: api.runtime.nc.is_connected, timeout=10)
        batch = await wait_batch(client, batch["id"], timeout=45)
        output, errors = await results_of(client, batch)
    assert batch["status"] == "completed"
    assert_exactly_once(batch, output, errors, expected)
    assert not errors


async def test_a_lost_result_is_found_and_the_line_queued_again(stack) -> None:  # type: ignore[no-untyped-def]
    """A worker drops a queued line unseen (here: it was told the job is cancelled), so no
    result will ever come. Once JetStream is quiet for batch_stall seconds the runner finds
    the line missing everywhere and queues it again."""
    model = unique("b")
    api = await stack.api(**BATCH)
    first = await stack.worker(model=[model], capacity=1, echo_delay=0.05)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    data, expected = batch_file(model, 10, words=4)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, data)
        batch_hex = batch["id"].removeprefix("batch_")
        await api.runtime.nc.publish(f"llmq.cancel.{batch_hex}-10")
        await wait_for(lambda: first.outcomes.get("expired") == 1, timeout=10)
        await wait_for(lambda: first.outcomes.get("ok") == 9, timeout=10)
        await first.close()  # it would drop the line again: it remembers the cancel
        await stack.worker(model=[model])
        batch = await wait_batch(client, batch["id"], timeout=20)
        output, errors = await results_of(client, batch)
    assert batch["status"] == "completed"
    assert_exactly_once(batch, output, errors, expected)
    assert not errors
