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
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from llmq.dispatcher.connection import connect, disconnect
from llmq.dispatcher.inbox import ReplyInbox
from llmq.dispatcher.publish import publish_job, publish_to_inbox, transient
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
        await publish_job(js, subject, too_big, {"Nats-Msg-Id": "j"}, 0.5, until=time.time() + 10)
    assert time.monotonic() - started < 1.0
    assert transient(ServiceUnavailableError(code=503, description="jetstream unavailable"))
    assert not transient(ValueError("no"))


# --- the api's publish with its ack sent to the job's mailbox (publish_to_inbox) ---------


@pytest.fixture
async def inbox(nats_server: EmbeddedNats) -> AsyncIterator[ReplyInbox]:
    nc = await connect(nats_server.url, "test-publish")
    inbox = ReplyInbox(nc, unique("api"))
    await inbox.start()
    yield inbox
    await inbox.stop()
    await disconnect(nc)


async def _to_inbox(
    inbox: ReplyInbox, subject: str, body: bytes, headers: dict[str, str], until: float
) -> PubAck:
    job = headers["Nats-Msg-Id"]
    box = inbox.open(job)
    try:
        reply = inbox.subject(job)
        return await publish_to_inbox(
            inbox._nc, subject, body, headers, reply, box=box, timeout=0.5, until=until
        )
    finally:
        inbox.close(job)


async def test_to_inbox_waits_for_the_stream_and_lands_once(inbox: ReplyInbox) -> None:
    js = inbox._nc.jetstream()
    stream, subject = _names()
    headers = {"Nats-Msg-Id": unique("job")}
    pending = asyncio.create_task(_to_inbox(inbox, subject, b"body", headers, time.time() + 20))
    await asyncio.sleep(0.6)
    assert not pending.done()  # no stream: no responders, retried
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    ack = await asyncio.wait_for(pending, 10)
    assert ack.stream == stream and ack.seq == 1 and not ack.duplicate
    again = await _to_inbox(inbox, subject, b"body", headers, time.time() + 5)
    assert again.duplicate and again.seq == ack.seq
    other = await _to_inbox(
        inbox, subject, b"body", {"Nats-Msg-Id": unique("job")}, time.time() + 5
    )
    assert other.seq == 2 and not other.duplicate
    assert (await js.stream_info(stream)).state.messages == 2
    await js.delete_stream(stream)


async def test_to_inbox_gives_up_at_the_deadline(inbox: ReplyInbox) -> None:
    _, subject = _names()
    started = time.monotonic()
    with pytest.raises(NoStreamResponseError):
        await _to_inbox(inbox, subject, b"x", {"Nats-Msg-Id": unique("j")}, time.time() + 1.0)
    assert 0.7 < time.monotonic() - started < 3.0


async def test_to_inbox_does_not_retry_other_failures(inbox: ReplyInbox) -> None:
    js = inbox._nc.jetstream()
    stream, subject = _names()
    too_big = b"x" * (inbox._nc.max_payload + 1)
    started = time.monotonic()
    with pytest.raises(MaxPayloadError):
        await _to_inbox(inbox, subject, too_big, {"Nats-Msg-Id": "j"}, time.time() + 10)
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    wrong = {"Nats-Msg-Id": unique("j"), "Nats-Expected-Stream": "NOT-" + stream}
    with pytest.raises(APIError) as refused:  # JetStream's own error, as js.publish raises it
        await _to_inbox(inbox, subject, b"x", wrong, time.time() + 10)
    assert refused.value.code == 400 and not transient(refused.value)
    assert time.monotonic() - started < 3.0
    await js.delete_stream(stream)


async def test_to_inbox_times_out_like_a_request(inbox: ReplyInbox) -> None:
    """Something answers nothing (a responder that stays silent): each attempt ends at its
    timeout, retried until the deadline, then the caller sees nats-py's TimeoutError."""
    _, subject = _names()
    await inbox._nc.subscribe(subject, cb=_ignore)
    started = time.monotonic()
    with pytest.raises(NatsTimeoutError):
        await _to_inbox(inbox, subject, b"x", {"Nats-Msg-Id": unique("j")}, time.time() + 1.2)
    assert 1.0 < time.monotonic() - started < 4.0


async def _ignore(_msg: object) -> None:
    return None
