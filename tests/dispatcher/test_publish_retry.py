"""The retried job publish against a real nats-server: a stream that is not there yet (as
while a leader is elected, nobody answers) is waited for until the deadline, and a retry
never doubles the job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from llmq.dispatcher.publish import publish_job, transient
from llmq.embedded import EmbeddedNats
from tests.stack import unique


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


def _names() -> tuple[str, str]:
    stream = unique("RETRY")
    return stream, f"retry.{stream}"


async def test_waits_for_the_stream_and_lands_once(js: JetStreamContext) -> None:
    stream, subject = _names()
    headers = {"Nats-Msg-Id": "job-1"}
    pending = asyncio.create_task(
        publish_job(js, subject, b"body", headers, timeout=0.5, until=time.time() + 20)
    )
    await asyncio.sleep(0.6)
    assert not pending.done()  # no stream: NoResponders, retried
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    ack = await asyncio.wait_for(pending, 10)
    again = await publish_job(js, subject, b"body", headers, timeout=0.5, until=time.time() + 5)
    assert again.duplicate and again.seq == ack.seq
    assert (await js.stream_info(stream)).state.messages == 1
    await js.delete_stream(stream)


async def test_gives_up_at_the_deadline(js: JetStreamContext) -> None:
    _, subject = _names()
    started = time.monotonic()
    with pytest.raises(NoStreamResponseError):
        await publish_job(
            js, subject, b"x", {"Nats-Msg-Id": "j"}, timeout=0.5, until=time.time() + 1.0
        )
    assert 0.7 < time.monotonic() - started < 3.0


async def test_other_failures_are_not_retried(js: JetStreamContext) -> None:
    _, subject = _names()
    too_big = b"x" * (js._nc.max_payload + 1)  # type: ignore[attr-defined]
    started = time.monotonic()
    with pytest.raises(MaxPayloadError):
        await publish_job(js, subject, too_big, {"Nats-Msg-Id": "j"}, 0.5, time.time() + 10)
    assert time.monotonic() - started < 1.0
    assert transient(ServiceUnavailableError(code=503, description="jetstream unavailable"))
    assert not transient(ValueError("no"))
