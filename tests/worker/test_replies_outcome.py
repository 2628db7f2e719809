"""The final frame of an async/batch job against a real nats-server: published while
LLMQ_OUTCOMES is gone (as while it elects a leader) it waits, lands once the stream is
provisioned again, and becomes the job's result exactly once; an interactive job's frames
stay on core NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType

from llmq.api.batch import stores
from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.collector import ResultCollector
from llmq.dispatcher.batch.records import time_hex
from llmq.dispatcher.connection import connect
from llmq.embedded import EmbeddedNats
from llmq.schemas import frames, names
from llmq.schemas.frames import Done, failure, frame_decoder, frame_encoder
from llmq.schemas.openai import Usage
from llmq.worker.replies import FrameSender
from tests.dispatcher.test_batch_collector import Books
from tests.stack import unique, wait_for


@pytest.fixture
async def nc(own_nats: EmbeddedNats) -> AsyncIterator[Client]:
    client = await connect(own_nats.url, "test")
    await stores.ensure_batch_streams(client.jetstream(), 3600)
    yield client
    await client.close()


async def test_a_final_frame_sent_while_the_stream_is_gone_lands_once(nc: Client) -> None:
    js = nc.jetstream()
    results = await js.create_key_value(
        KeyValueConfig(bucket=unique("R"), history=1, storage=StorageType.FILE)
    )
    job, model = time_hex(), unique("m")
    subject = names.outcome_subject("acme", model, job)
    deadline_ms = int((time.time() + 60) * 1000)
    await js.delete_stream(names.OUTCOMES_STREAM)  # nothing captures the outcome subject

    sender = FrameSender(nc, subject, "w1", deadline_ms)
    await sender.accepted(2)
    done = Done(usage=Usage(3, 4, 7), finish_reason="stop")
    sending = asyncio.create_task(sender.done(done))
    await asyncio.sleep(1.0)
    assert not sending.done()  # core NATS would have returned at once, the frame lost

    await stores.ensure_batch_streams(js, 3600)  # the provisioning brings it back
    await asyncio.wait_for(sending, 20)
    assert (await js.stream_info(names.OUTCOMES_STREAM)).state.messages == 1  # `accepted` lost
    # The same attempt's final frame again (a retry whose ack was lost): not stored twice.
    again = FrameSender(nc, subject, "w1", deadline_ms)
    await again.accepted(2)
    await again.done(Done(usage=Usage(9, 9, 18)))
    await nc.flush()
    info = await js.stream_info(names.OUTCOMES_STREAM)
    assert info.state.messages == 2  # the first final frame and the second `accepted`

    books = Books()
    settled: list[str] = []

    async def on_accepted(_tenant: str, _job: str) -> None:
        return None

    async def on_result(_tenant: str, job_id: str) -> None:
        settled.append(job_id)

    collector = ResultCollector(js, results, books, on_accepted, on_result)
    collector.start()
    try:
        await wait_for(lambda: settled == [job], timeout=20)
    finally:
        await collector.stop()
    raw = await kvs.read_raw(results, names.job_results_key(job))
    assert raw is not None
    stored = frame_decoder.decode(raw)
    assert isinstance(stored, Done) and stored.usage.total_tokens == 7
    assert [(r[2], r[3], r[4]) for r in books.released] == [(job, 3, 4)]
    assert (await js.stream_info(names.OUTCOMES_STREAM)).state.messages == 0


async def test_the_final_frame_carries_a_stable_msg_id(nc: Client) -> None:
    js = nc.jetstream()
    job = time_hex()
    subject = names.outcome_subject("acme", unique("m"), job)
    sender = FrameSender(nc, subject, "w1", int((time.time() + 60) * 1000))
    await sender.accepted(3)
    await sender.failed(failure(502, "upstream failed", "upstream_error", "bad_gateway"))
    msg = await js.get_last_msg(names.OUTCOMES_STREAM, subject)
    headers = msg.headers or {}
    assert headers["Nats-Msg-Id"] == f"{job}:3:final"
    assert headers[names.H_FRAME] == frames.ERROR and headers[names.H_SEQ] == "1"


async def test_a_final_frame_that_never_lands_ends_at_the_deadline(nc: Client) -> None:
    """No stream until the deadline: logged and given up, never raised, never past it."""
    await nc.jetstream().delete_stream(names.OUTCOMES_STREAM)
    sender = FrameSender(
        nc, names.outcome_subject("acme", "m", time_hex()), "w1", int((time.time() + 1) * 1000)
    )
    started = time.monotonic()
    await asyncio.wait_for(sender.done(Done(usage=Usage())), 10)
    assert time.monotonic() - started < 5


async def test_interactive_frames_stay_on_core_nats(nc: Client) -> None:
    received: list[Msg] = []

    async def take(msg: Msg) -> None:
        received.append(msg)

    sub = await nc.subscribe("_INBOX.outcome-test.>", cb=take)
    sender = FrameSender(nc, "_INBOX.outcome-test.j1", "w1", int((time.time() + 60) * 1000))
    await sender.accepted(1)
    started = time.monotonic()
    await sender.done(Done(usage=Usage(1, 2, 3)))  # no stream captures it: no ack to wait for
    assert time.monotonic() - started < 0.5
    await nc.flush()
    await wait_for(lambda: len(received) == 2)
    await sub.unsubscribe()
    final = received[1]
    assert not final.reply  # a JetStream publish would carry the ack's inbox
    assert "Nats-Msg-Id" not in (final.headers or {})
    assert (final.headers or {})[names.H_FRAME] == frames.DONE
    assert frame_decoder.decode(final.data) == frame_decoder.decode(
        frame_encoder.encode(Done(usage=Usage(1, 2, 3)))
    )
