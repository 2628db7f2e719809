"""`SSEResponse` (api/sse.py): writes the events as they come, notices a client that leaves
during a silent pause (its events are closed, so the job is cancelled), and lets a
cancellation from outside (the shutdown grace) go on after the same cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmq.api.sse import DONE, SSEResponse, event


class Client:
    """The ASGI side of one streamed request: what was sent, and a disconnect on demand."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.first = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message.get("body"):
            self.first.set()


class Events:
    """One event, then a silent pause until released; records that it was closed."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.closed = False

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            yield event(b'{"n":1}')
            await self.release.wait()
            yield DONE
        finally:
            self.closed = True


async def test_writes_every_event_then_ends_the_body() -> None:
    client, events = Client(), Events()
    events.release.set()
    response = SSEResponse(events(), {"X-Request-Id": "r1"})
    await asyncio.wait_for(response({}, client.receive, client.send), 10)
    start, *bodies = client.sent
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"x-request-id", b"r1") in start["headers"]
    assert [m["body"] for m in bodies] == [b'data: {"n":1}\n\n', DONE, b""]
    assert bodies[-1]["more_body"] is False and events.closed


async def test_a_client_leaving_during_a_pause_ends_the_stream() -> None:
    client, events = Client(), Events()
    task = asyncio.create_task(SSEResponse(events())({}, client.receive, client.send))
    await asyncio.wait_for(client.first.wait(), 10)
    client.gone.set()
    await asyncio.wait_for(task, 10)  # ends without an error, though no event came
    assert events.closed and not task.cancelled()
    assert [m.get("body") for m in client.sent[1:]] == [b'data: {"n":1}\n\n']


async def test_a_cancellation_from_outside_goes_on_after_the_cleanup() -> None:
    client, events = Client(), Events()
    task = asyncio.create_task(SSEResponse(events())({}, client.receive, client.send))
    await asyncio.wait_for(client.first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert events.closed


async def test_a_disconnect_after_the_end_cancels_nothing() -> None:
    client, events = Client(), Events()
    events.release.set()
    await asyncio.wait_for(SSEResponse(events())({}, client.receive, client.send), 10)
    client.gone.set()
    await asyncio.sleep(0)
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert asyncio.current_task() is not None and not asyncio.current_task().cancelling()  # type: ignore[union-attr]
