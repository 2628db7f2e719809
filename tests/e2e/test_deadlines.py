"""Deadlines that fit LLMs: `Llmq-Deadline` bounds the wait for the first token; a stream
that flows lives until the backend ends it, cut only by silence and `max_deadline`; a client
may ask for its own first-token deadline (`X-Llmq-Deadline`); a passed deadline is always a
504 `deadline_exceeded`, never a lost worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.spec import assert_valid
from tests.stack import unique, wait_for


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


async def _stream_events(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> list[str]:
    events: list[str] = []
    async with client.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    return events


async def test_a_stream_outlives_its_first_token_deadline(stack) -> None:  # type: ignore[no-untyped-def]
    """Deadline 1 s, a stream of ~3 s: every token arrives (the official SDK as client)."""
    model = unique("m")
    api = await stack.api(deadline=1.0, max_deadline=30.0)
    await stack.worker(model=[model], echo_delay=0.15)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    started = time.monotonic()
    stream = await client.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": _words(20)}]
    )
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert time.monotonic() - started > 2.0
    assert text == _words(20)
    await client.close()


async def test_a_whole_answer_outlives_its_first_token_deadline(stack) -> None:  # type: ignore[no-untyped-def]
    """A job that answers whole is under way once a worker took it: not cut at the deadline."""
    model = unique("m")
    api = await stack.api(deadline=1.0, max_deadline=30.0)
    await stack.worker(model=[model], echo_delay=0.15)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    started = time.monotonic()
    resp = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": _words(20)}]
    )
    assert time.monotonic() - started > 2.0
    assert resp.choices[0].message.content == _words(20)
    await client.close()


@contextlib.contextmanager
def _loop_clock_ahead_of_wall_clock(rate: float) -> Iterator[None]:
    """The event loop's clock runs `rate` faster than `time.time()` from now on, as when NTP
    slews the wall clock: a timer set for "the deadline" fires a little before the wall
    clock reaches it. Every timer of the test's loop (the in-process api's) is affected."""
    loop = asyncio.get_running_loop()
    monotonic = loop.time
    origin = monotonic()
    loop.time = lambda: origin + (monotonic() - origin) * rate  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.time  # the class's own again


@pytest.mark.parametrize("drift", [1.0, 1.01])
async def test_stream_at_max_deadline_is_504_never_worker_lost(stack, drift: float) -> None:  # type: ignore[no-untyped-def]
    """The race that read a passed deadline as a silent worker: streams whose tokens flow
    until they are cut at `max_deadline`, several at once and repeated, with the loop's
    clock in step with the wall clock and 1 % ahead of it (the api's timer then fires a few
    ms before the wall-clock deadline, which made it report `worker_lost`). Each stream must
    end with one `deadline_exceeded` error event, then `[DONE]`."""
    model = unique("m")
    api = await stack.api(deadline=1.0, max_deadline=1.2)
    # A worker process of its own, on the real clock, as in production: its frames cannot
    # beat the api's timer by sharing its loop.
    stack.process("worker", "--model", model, "--echo-delay", "0.1", "--capacity", "4")
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    url = f"{api.url}/v1/chat/completions"
    # ~30 s of tokens: cut at the 1.2 s bound, far from their end even on a loaded machine
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": _words(300)}]}
    codes: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        with _loop_clock_ahead_of_wall_clock(drift):
            for _ in range(3):
                started = time.monotonic()
                runs = await asyncio.gather(*(_stream_events(client, url, body) for _ in range(4)))
                assert time.monotonic() - started < 1.2 + 8.0
                for events in runs:
                    assert events[-1] == "[DONE]"
                    assert len(events) > 4  # tokens flowed before the cut
                    error = json.loads(events[-2])["error"]
                    assert_valid("ErrorResponse", {"error": error})
                    codes.append(error["code"])
    assert codes == ["deadline_exceeded"] * 12
    await wait_for(lambda: _in_flight(api, model) == 0, timeout=3)  # cancelled, not left on


def _in_flight(api, model: str) -> int:  # type: ignore[no-untyped-def]
    return sum(w.in_flight for w in api.runtime.registry.workers_for(model))


async def test_a_stream_cut_at_max_deadline_by_the_sdk(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await stack.api(deadline=1.0, max_deadline=1.0)
    await stack.worker(model=[model], echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": _words(60)}]
    )
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "deadline_exceeded"
    await client.close()


async def test_client_deadline_header_bounds_the_queue_wait(stack) -> None:  # type: ignore[no-untyped-def]
    """`X-Llmq-Deadline: 0.8` behind a busy worker: a 504 after ~0.8 s, although the api's
    own deadline is 60 s; a value above `max_deadline` is capped by it. Each 504 comes no
    earlier than its bound and before the next larger one (0.8 < the 4 s cap < 60 s), with
    seconds to spare for a loaded machine, which only makes an answer later."""
    model = unique("m")
    patient = await stack.api(deadline=60.0, max_deadline=60.0)
    api = await stack.api(deadline=60.0, max_deadline=4.0)
    worker = await stack.worker(model=[model], capacity=1, echo_delay=1.0)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    await wait_for(lambda: patient.runtime.registry.workers_for(model))
    url = f"{api.url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=30) as client:
        # ~10 s: the worker stays busy through both waits (0.8 + 4 s, and a loaded machine)
        busy = {"model": model, "messages": [{"role": "user", "content": _words(10)}]}
        slow = asyncio.create_task(client.post(f"{patient.url}/v1/chat/completions", json=busy))
        await wait_for(lambda: worker.scheduler.in_flight == 1)
        body = {"model": model, "messages": [{"role": "user", "content": "queued"}]}
        for header, expected, before in (("0.8", 0.8, 4.0 - 0.1), ("1000", 4.0, 10.0)):
            started = time.monotonic()
            resp = await client.post(url, json=body, headers={"X-Llmq-Deadline": header})
            took = time.monotonic() - started
            assert resp.status_code == 504, resp.text
            assert resp.json()["error"]["code"] == "deadline_exceeded"
            assert_valid("ErrorResponse", resp.json())
            assert expected - 0.1 < took < before, (header, took)
        assert (await slow).status_code == 200


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan", "inf", ""])
async def test_a_bad_deadline_header_is_a_400_that_uses_no_quota(stack, value: str) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await stack.api()
    worker = await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(
            f"{api.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Llmq-Deadline": value},
        )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_deadline", "X-Llmq-Deadline")
    assert_valid("ErrorResponse", resp.json())
    assert worker.outcomes == {}
