"""How the queue behaves: real capacity, load spreading, deadlines, missing workers,
cancel on disconnect, and a worker dying mid-stream."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import openai

from tests.stack import FAST, refused_port, unique, wait_for, wait_serving
from tests.worker.backends.fake_upstreams import FakeUpstream, Received, Reply, openai_chat
from tests.worker.test_metrics import value

CHAT = "/v1/chat/completions"


async def test_capacity_is_real_and_load_spreads(stack) -> None:  # type: ignore[no-untyped-def]
    """2 workers x capacity 2, 8 concurrent 1 s requests: ~2 s in all, no worker above 2."""
    model = unique("m")
    api = await stack.api()
    w1 = await stack.worker(model=[model], capacity=2, echo_delay=0.25)
    w2 = await stack.worker(model=[model], capacity=2, echo_delay=0.25)
    await wait_for(lambda: len(api.runtime.registry.workers_for(model)) == 2)
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    start = time.monotonic()
    results = await asyncio.gather(
        *[
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "a b c d"}]
            )
            for _ in range(8)
        ]
    )
    elapsed = time.monotonic() - start
    assert all(r.choices[0].message.content == "a b c d" for r in results)
    assert 1.9 <= elapsed < 3.0, elapsed
    assert w1.scheduler.peak <= 2 and w2.scheduler.peak <= 2
    assert w1.outcomes.get("ok", 0) >= 2 and w2.outcomes.get("ok", 0) >= 2
    assert w1.outcomes["ok"] + w2.outcomes["ok"] == 8
    await client.close()


async def test_queued_job_past_deadline_gets_504_and_never_runs(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    patient = await stack.api()
    hurried = await stack.api(deadline=1.0)
    worker = await stack.worker(model=[model], capacity=1, echo_delay=0.5)
    await wait_for(lambda: hurried.runtime.registry.workers_for(model))
    await wait_for(lambda: patient.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(timeout=10) as client:
        slow_body = {"model": model, "messages": [{"role": "user", "content": "w1 w2 w3 w4 w5"}]}
        slow = asyncio.create_task(
            client.post(f"{patient.url}/v1/chat/completions", json=slow_body)
        )
        await wait_for(lambda: worker.scheduler.in_flight == 1)
        started = time.monotonic()
        body = {"model": model, "messages": [{"role": "user", "content": "never"}]}
        queued = await client.post(f"{hurried.url}/v1/chat/completions", json=body)
        assert queued.status_code == 504
        assert 0.9 < time.monotonic() - started < 1.5
        assert queued.json()["error"]["code"] == "deadline_exceeded"
        assert worker.scheduler.held == 0
        first = await slow
    assert first.status_code == 200
    await wait_for(lambda: worker.outcomes.get("expired", 0) == 1, timeout=3)
    assert worker.outcomes == {"ok": 1, "expired": 1}


async def test_unknown_model_404_and_no_worker_503(stack) -> None:  # type: ignore[no-untyped-def]
    """With `no_worker_grace` 0 (fail fast); by default such a request waits for a worker
    (tests/e2e/test_rolling_deploy.py)."""
    api = await stack.api(no_worker_grace=0)
    async with httpx.AsyncClient(timeout=5) as client:
        body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
        start = time.monotonic()
        resp = await client.post(f"{api.url}/v1/chat/completions", json=body)
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "model_not_found"
        assert resp.json()["error"]["param"] == "model"
        model = unique("m")
        worker = await stack.worker(model=[model])
        await wait_for(lambda: api.runtime.registry.workers_for(model))
        await worker.close()
        await wait_for(lambda: not api.runtime.registry.workers_for(model))
        start = time.monotonic()
        resp = await client.post(f"{api.url}/v1/chat/completions", json={**body, "model": model})
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "no_worker"
        assert time.monotonic() - start < 1.0


async def test_client_disconnect_cancels_the_worker(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await stack.api()
    worker = await stack.worker(model=[model], echo_delay=0.2)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    words = " ".join(f"w{i}" for i in range(100))
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": words}]}
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", f"{api.url}/v1/chat/completions", json=body) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                if seen >= 3:
                    break
            assert worker.scheduler.in_flight == 1
    left = time.monotonic()
    await wait_for(lambda: worker.scheduler.in_flight == 0, timeout=2)
    assert time.monotonic() - left < 1.0
    assert worker.outcomes.get("cancelled") == 1


async def test_worker_killed_mid_stream_ends_with_error_then_done(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await stack.api()
    proc = stack.process("worker", "--model", model, "--echo-delay", "0.1")
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    words = " ".join(f"w{i}" for i in range(200))
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": words}]}
    events: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{api.url}/v1/chat/completions", json=body) as resp:
            killed_at = 0.0
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 5:
                    proc.signal(signal.SIGKILL)
                    killed_at = time.monotonic()
            ended = time.monotonic()
    assert events[-1] == "[DONE]"
    assert '"error"' in events[-2] and "worker" in events[-2]
    assert ended - killed_at <= api.settings.protocol.ping_interval * 3 + 0.5


async def test_job_redelivered_when_worker_dies_before_first_token(stack) -> None:  # type: ignore[no-untyped-def]
    """A worker that took a job and died before answering: another worker runs it."""
    model = unique("m")
    api = await stack.api()
    doomed = stack.process("worker", "--model", model, "--echo-delay", "2", "--capacity", "1")
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"model": model, "messages": [{"role": "user", "content": "survives"}]}
        pending = asyncio.create_task(client.post(f"{api.url}/v1/chat/completions", json=body))
        await asyncio.sleep(0.8)
        doomed.kill()
        await stack.worker(model=[model])
        resp = await pending
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "survives"


async def test_a_worker_that_stands_still_past_the_silence_still_answers(
    stack: Any, upstream: FakeUpstream
) -> None:
    """The worker's process stands still (a starved CPU: two busy loops beside the suite
    made it 1.6 s) between taking a whole job and answering it, past the api's silence bound
    (three ping intervals, 0.9 s): the api gives the job back to the queue meanwhile, then
    takes the same worker's answer when it comes, a 200, not a 502 `frames_lost`. The api
    runs in its own process, so its timers run while this one stands still."""
    model = unique("m")
    loop = asyncio.get_running_loop()
    stall = 3 * FAST["ping_interval"] + 0.5  # under the ack wait (2 s): no redelivery

    def stand_still_after_taking(received: Received) -> Reply:
        # `accepted` is on its way by now; the keep-alive's first ping would be due 0.3 s
        # after it, so the process stops before that and stays still past the silence
        loop.call_later(0.1, time.sleep, stall)
        return openai_chat(["still", " here"], delay=0.2)

    upstream.respond(CHAT, stand_still_after_taking)
    api = await stack.api_process()
    await stack.worker(model=[f"{model}=gpt"], backend="openai", backend_url=f"{upstream.url}/v1")
    await wait_serving(api.url, model)
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        started = time.monotonic()
        resp = await client.post(f"{api.url}/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "still here"
    assert time.monotonic() - started >= stall  # the stall did happen during the job
    assert len([r for r in upstream.received if r.path == CHAT]) == 1  # run once


async def test_job_out_of_attempts_fails_fast_not_at_deadline(stack) -> None:  # type: ignore[no-untyped-def]
    """Its only delivery died with its worker: JetStream's max-deliveries advisory ends it."""
    model = unique("m")
    api = await stack.api(deadline=60.0)
    doomed = stack.process("worker", "--model", model, "--echo-delay", "5", max_deliver=1)
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"model": model, "messages": [{"role": "user", "content": "lost"}]}
        pending = asyncio.create_task(client.post(f"{api.url}/v1/chat/completions", json=body))
        await asyncio.sleep(0.8)
        doomed.kill()
        started = time.monotonic()
        resp = await pending
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "attempts_exhausted"
    assert time.monotonic() - started < api.settings.protocol.ack_wait + 3


async def test_all_circuits_open_is_a_fast_503(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await stack.api()
    worker = await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    worker.breaker._open()
    await wait_for(lambda: not api.runtime.registry.workers_for(model), timeout=3)
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.monotonic()
        body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
        resp = await client.post(f"{api.url}/v1/chat/completions", json=body)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_worker"
    assert time.monotonic() - started < 1.0


async def test_nats_server_restart_loses_memory_state_and_both_sides_put_it_back(
    own_nats, stack
) -> None:  # type: ignore[no-untyped-def]
    """A restarted nats-server has lost LLMQ_JOBS (and the job queued in it), the workers'
    consumers and LLMQ_WORKERS: all memory storage. The lost job's client gets 503
    `job_lost` within seconds, not at its deadline; api and worker re-provision on
    reconnect, so chat works again without restarting either."""
    stack.nats_url = own_nats.url
    model = unique("m")
    api = await stack.api(deadline=60.0)
    worker = await stack.worker(model=[model], capacity=1, echo_delay=0.2)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "before and after"}]
    first = await client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    assert first.choices[0].message.content == "before and after"

    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        busy = asyncio.create_task(
            http.post("/v1/chat/completions", json={"model": model, "messages": [
                {"role": "user", "content": " ".join(["w"] * 15)}]})
        )  # fmt: skip
        await wait_for(lambda: worker.scheduler.in_flight == 1, timeout=5)
        queued = asyncio.create_task(
            http.post("/v1/chat/completions", json={"model": model, "messages": messages})
        )
        await asyncio.sleep(0.3)  # the second job waits in LLMQ_JOBS for the only slot
        started = time.monotonic()
        await asyncio.to_thread(own_nats.restart, crash=True)
        lost = await queued
        assert lost.status_code == 503, lost.text
        assert lost.json()["error"]["code"] == "job_lost"
        assert time.monotonic() - started < 10  # the deadline is 60 s
        await busy  # the running job ends one way or the other, never hangs

    await wait_for(lambda: api.runtime.provisioner.rounds >= 1, timeout=10)
    await wait_for(lambda: worker.provisioner.rounds >= 1, timeout=10)
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=10)
    again = await client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    assert again.choices[0].message.content == "before and after"
    stream = await client.chat.completions.create(model=model, messages=messages, stream=True)  # type: ignore[arg-type]
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()

    # Operators see it: one reconnect each, connected again.
    async with httpx.AsyncClient() as http:
        api_text = (await http.get(f"{api.url}/metrics")).text
    worker_text = worker.metrics.render().decode()
    for text in (api_text, worker_text):
        assert value(text, "llmq_nats_reconnects_total") == 1
        assert value(text, "llmq_nats_connected") == 1


async def test_a_refused_upstream_does_not_show_its_address(stack, caplog) -> None:  # type: ignore[no-untyped-def]
    """The client hears that the backend failed, not where it lives; the log has the detail."""

    model = unique("m")
    port = refused_port()  # nothing listens there
    api = await stack.api()
    await stack.worker(
        model=[model], backend="openai", backend_url=f"http://127.0.0.1:{port}/v1",
        breaker_threshold=100,
    )  # fmt: skip
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        for stream in (False, True):
            resp = await client.post(
                f"{api.url}/v1/chat/completions", json={**body, "stream": stream}
            )
            assert resp.status_code == 502, resp.text
            error = resp.json()["error"]
            assert error["code"] == "upstream_unavailable"
            assert "127.0.0.1" not in resp.text and str(port) not in resp.text
    assert any(str(port) in r.getMessage() for r in caplog.records)
