"""Every process survives every NATS outage, on real processes (issue 25 point 3).

Started while NATS is unreachable, the api opens its port at once (`/health` alive, `/ready`
503 naming the URL it waits for), the worker and `llmq top` say what they wait for, and each
exits within 2 s of SIGTERM or SIGINT. Started, then NATS stopped for 10 s and started
again: the api serves again, and `llmq top` shows the live numbers again, within 2 s of the
server's return; meanwhile `top` says since when it is disconnected.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import httpx
import openai
import pytest

from llmq.embedded import free_port
from tests.stack import refused_port, unique, wait_for, wait_serving

EXIT_BOUND = 2.0
"""Seconds a process may take to exit after SIGTERM/SIGINT (issue 25)."""
BACK_BOUND = 2.0
"""Seconds after the server's return within which every process serves again."""


async def _exit_time(proc: Any, sig: int) -> float:
    proc.signal(sig)
    sent = time.monotonic()
    await wait_for(lambda: proc.proc.poll() is not None, timeout=10, interval=0.01)
    return time.monotonic() - sent


async def _ready(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=2) as client:
        resp = await client.get(f"{url}/ready")
        return resp.status_code, resp.json()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_started_with_nats_down_each_process_waits_and_exits_on_a_signal(
    stack: Any, sig: int
) -> None:
    port = refused_port()  # nothing listens here
    stack.nats_url = f"nats://127.0.0.1:{port}"
    shown = f"NATS at nats://127.0.0.1:{port}"
    api = await stack.api_process()  # its port opens before NATS is reached
    worker = stack.process("worker", "--model", unique("down"))
    top = stack.process("top", "--interval", "0.5")
    url = api.url

    async def api_waits() -> bool:
        try:
            status, body = await _ready(url)
        except httpx.HTTPError:
            return False
        return status == 503 and body["status"] == "starting" and shown in body["waiting_for"]

    await wait_for(api_waits, timeout=30)
    async with httpx.AsyncClient(timeout=2) as client:
        assert (await client.get(f"{url}/health")).status_code == 200
        chat = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        resp = await client.post(f"{url}/v1/chat/completions", json=chat)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "starting"
    assert resp.headers["retry-after"] == "1"
    for proc in (api, worker, top):
        await wait_for(lambda p=proc: f"waiting for {shown}" in p.output(), timeout=30)
    timings = {}
    for name, proc in (("api", api), ("worker", worker), ("top", top)):
        timings[name] = await _exit_time(proc, sig)
        assert "Traceback" not in proc.output(), proc.output()
    print(f"exit after {signal.Signals(sig).name} while never connected: {timings}")
    assert all(t <= EXIT_BOUND for t in timings.values()), timings
    assert api.proc.returncode == 0 and worker.proc.returncode == 0
    assert "@" not in api.output()  # never a credential (none here; the URL as configured)


async def test_a_nats_outage_of_10_s_every_process_comes_back_within_2_s(
    own_nats: Any, stack: Any
) -> None:
    stack.nats_url = own_nats.url
    model = unique("outage")
    api = await stack.api_process()
    stack.process("worker", "--model", model)
    top = stack.process("top", "--interval", "0.25")
    url = api.url
    await wait_serving(url, model)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    async def answered() -> bool:
        try:
            reply = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "back"}], timeout=1.0
            )
        except openai.APIError:
            return False
        return reply.choices[0].message.content == "back"

    async with client:
        assert await answered()
        await wait_for(lambda: "workers 1" in _last_screen(top.output()), timeout=15)

        own_nats.stop()
        await wait_for(lambda: "disconnected since" in _last_screen(top.output()), timeout=5)
        status, body = await _ready(url)
        assert status == 503 and body["nats"] is False
        await asyncio.sleep(10)
        assert "disconnected since" in _last_screen(top.output())
        assert (await _ready(url))[0] == 503

        own_nats.restart()
        back = time.monotonic()
        await wait_for(answered, timeout=30, interval=0.05)
        serving_after = time.monotonic() - back
        await wait_for(lambda: _live(_last_screen(top.output())), timeout=30, interval=0.05)
        top_after = time.monotonic() - back
        ready_status, _ = await _ready(url)
    print(f"after a 10 s NATS outage: api+worker serving in {serving_after:.2f} s, "
          f"top live in {top_after:.2f} s")  # fmt: skip
    assert ready_status == 200
    assert serving_after <= BACK_BOUND, serving_after
    assert top_after <= BACK_BOUND, top_after
    assert "Traceback" not in api.output() + top.output()


def _last_screen(output: str) -> str:
    """`llmq top`'s latest complete refresh (each starts with its head line)."""
    screens = output.split("llmq top  every")
    return screens[-2] if len(screens) > 2 else ""


def _live(screen: str) -> bool:
    return "apis 1  workers 1" in screen and "disconnected" not in screen


async def test_nats_gone_a_signal_still_stops_api_and_worker_within_2_s(
    own_nats: Any, stack: Any
) -> None:
    """Connected once, then NATS went away: neither the api's nor the idle worker's stop
    waits for a server that is not there (drain, leave the registry, disconnect)."""
    stack.nats_url = own_nats.url
    model = unique("gone")
    api = await stack.api_process()
    worker = stack.process("worker", "--model", model, "--drain-timeout", "30")
    await wait_serving(api.url, model)
    own_nats.stop()
    await wait_for(lambda: "nats disconnected" in worker.output() + api.output(), timeout=10)
    await asyncio.sleep(1.0)  # well into the outage
    timings = {"worker": await _exit_time(worker, signal.SIGTERM)}
    timings["api"] = await _exit_time(api, signal.SIGTERM)
    print(f"exit after SIGTERM during a NATS outage: {timings}")
    assert all(t <= EXIT_BOUND for t in timings.values()), timings
    assert worker.proc.returncode == 0 and api.proc.returncode == 0
    assert "Traceback" not in worker.output() + api.output()


async def test_redis_down_at_start_the_api_serves_and_says_what_it_waits_for(
    stack: Any, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from llmq.embedded import EmbeddedRedis

    caplog.set_level(logging.INFO)
    port = free_port()
    stack.redis_url = f"redis://127.0.0.1:{port}/0"
    api = await stack.api(auth_mode="keys")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{api.url}/ready")).json()["failing"] == ["redis"]
    await wait_for(lambda: f"waiting for Redis at redis://127.0.0.1:{port}/0" in caplog.text)
    valkey = EmbeddedRedis(tmp_path / "late-valkey", port=port)
    try:
        await wait_for(lambda: "Redis is reachable" in caplog.text, timeout=15)
        status, body = await _ready(api.url)
        assert status == 200 and body["redis"] is True, body
    finally:
        valkey.stop()
