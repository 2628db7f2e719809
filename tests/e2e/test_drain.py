"""Graceful drain, on real processes.

Worker, SIGTERM: it stops fetching, finishes its in-flight job, leaves the registry at once
and exits 0, while the queued jobs go to the other worker; a job longer than the drain
bound is cut at the bound. Api, SIGTERM: it stops accepting connections, lets an open
stream finish, then exits 0; a stream longer than the grace is cut at the bound.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import Any

import httpx

from tests.stack import unique, wait_for, wait_serving


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def _chat(model: str, n: int, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": _words(n)}]}


async def _exited(proc: Any, timeout: float) -> int:
    await wait_for(lambda: proc.proc.poll() is not None, timeout=timeout)
    return int(proc.proc.returncode)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


SLOW = 30.0
"""The drain bound and the ack wait of the sigterm test: what a wrong drain would cost (the
worker waiting for its bound, a job waiting for its redelivery). The test's bounds sit far
below it and far above the ~5 s a right drain takes on a loaded machine."""
FIRST_WORDS = 50
"""The in-flight job: ~5 s at 0.1 s a word, to outlast what the test starts before its
SIGTERM (another worker, seen by the api), also on a loaded machine (~1 s was too short)."""


async def test_worker_sigterm_finishes_in_flight_and_hands_queued_jobs_on(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("drain")
    api = await stack.api(ack_wait=SLOW)
    leaving = stack.process(
        "worker", "--model", model, "--capacity", "2", "--echo-delay", "0.1",
        "--drain-timeout", str(SLOW), "--worker-id", f"leaving-{model}", ack_wait=SLOW,
    )  # fmt: skip
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    url = f"{api.url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=2 * SLOW) as client:
        # ~5 s on `leaving`, which keeps asking for a second job (it has a free slot)
        first = asyncio.create_task(client.post(url, json=_chat(model, FIRST_WORDS)))
        await wait_for(lambda: any(w.in_flight for w in api.runtime.registry.workers_for(model)))
        # `staying` serves a second model too, and is kept busy with it meanwhile
        other = unique("drain")
        staying = await stack.worker(
            model=[model, other], capacity=1, echo_delay=0.1, ack_wait=SLOW
        )
        await wait_for(lambda: api.runtime.registry.workers_for(other))
        second = asyncio.create_task(client.post(url, json=_chat(other, 10)))
        await wait_for(lambda: staying.scheduler.in_flight == 1)
        leaving.signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)
        assert not first.done()
        # queued after SIGTERM: the draining worker's open pull request must not take them
        queued = [asyncio.create_task(client.post(url, json=_chat(model, 3))) for _ in range(2)]
        assert await _exited(leaving, timeout=SLOW) == 0
        exited = time.monotonic() - signalled
        results = [await first, await second, *(await asyncio.gather(*queued))]
        all_done = time.monotonic() - signalled
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert results[0].json()["choices"][0]["message"]["content"] == _words(FIRST_WORDS)
    # the in-flight job needed ~5 s: it exited when that ended, not at its drain bound
    assert exited < SLOW / 2, exited
    assert staying.outcomes == {"ok": 3}  # its own job and both queued ones
    # ~1 s for `second`, then 2 x 0.3 s: no job waited for a redelivery (ack wait SLOW)
    assert all_done < SLOW / 2, all_done
    # it left the registry when it exited, not when its heartbeat aged out
    assert [w.id for w in api.runtime.registry.workers_for(model)] == [staying.id]
    out = leaving.output()
    assert "draining worker" in out and "Traceback" not in out


async def test_worker_drain_is_bounded(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("drain")
    api = await stack.api()
    proc = stack.process("worker", "--model", model, "--echo-delay", "0.1", "--drain-timeout", "1")
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    events: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        body = _chat(model, 600, stream=True)  # ~60 s, unless the drain bound cuts it
        async with client.stream("POST", f"{api.url}/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3:
                    proc.signal(signal.SIGTERM)
                    signalled = time.monotonic()
            ended = time.monotonic() - signalled
    assert await _exited(proc, timeout=10) == 0
    assert events[-1] == "[DONE]" and '"error"' in events[-2]
    assert "worker_shutdown" in events[-2]
    assert ended < 1.0 + 10.0, ended  # cut at the 1 s bound, far from the stream's ~60 s


async def test_drain_cut_hands_an_unstarted_answer_to_another_worker(stack) -> None:  # type: ignore[no-untyped-def]
    """A non-streaming job cut by the drain bound has shown nobody a token: it is given back
    and another worker answers it."""
    model = unique("drain")
    api = await stack.api()
    proc = stack.process("worker", "--model", model, "--echo-delay", "0.2", "--drain-timeout", "1")
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    async with httpx.AsyncClient(timeout=30) as client:
        pending = asyncio.create_task(
            client.post(f"{api.url}/v1/chat/completions", json=_chat(model, 20))
        )
        await wait_for(lambda: any(w.in_flight for w in api.runtime.registry.workers_for(model)))
        proc.signal(signal.SIGTERM)
        await stack.worker(model=[model])
        resp = await pending
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == _words(20)
    assert await _exited(proc, timeout=10) == 0


async def test_api_sigterm_stops_accepting_and_lets_open_streams_finish(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("drain")
    proc = await stack.api_process(shutdown_grace=20)
    port = proc.port
    await stack.worker(model=[model], echo_delay=0.1)
    base = proc.url
    await wait_serving(base, model)
    events: list[str] = []
    refused_while_streaming = False
    async with httpx.AsyncClient(timeout=30) as client:
        body = _chat(model, 20, stream=True)  # ~2 s
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3:
                    proc.signal(signal.SIGTERM)
                    signalled = time.monotonic()
                    await asyncio.sleep(0.3)
                    refused_while_streaming = not _listening(port)
                    assert proc.proc.poll() is None  # still serving the open stream
            finished = time.monotonic() - signalled
    assert refused_while_streaming, "new connections are refused once SIGTERM arrived"
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    text = "".join(events)
    assert all(f"w{i}" in text for i in range(20))
    assert await _exited(proc, timeout=10) == 0
    assert time.monotonic() - signalled - finished < 5.0
    assert "Traceback" not in proc.output()


async def test_api_grace_bounds_a_long_stream(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("drain")
    proc = await stack.api_process(shutdown_grace=1)
    worker = await stack.worker(model=[model], echo_delay=0.1)
    base = proc.url
    await wait_serving(base, model)
    async with httpx.AsyncClient(timeout=30) as client:
        body = _chat(model, 200, stream=True)  # ~20 s
        seen = 0
        try:
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
                async for _line in resp.aiter_lines():
                    seen += 1
                    if seen == 3:
                        proc.signal(signal.SIGTERM)
                        signalled = time.monotonic()
        except httpx.HTTPError:
            pass  # the server cut the stream
    assert await _exited(proc, timeout=15) == 0
    assert time.monotonic() - signalled < 1.0 + 5.0
    # the cut stream's job was cancelled: the worker stops generating
    await wait_for(lambda: worker.scheduler.in_flight == 0, timeout=5)
    assert worker.outcomes.get("cancelled") == 1
