"""Natural batching (worker/replies.py): `drive` flushes exactly when the producer is about
to wait, never later; `FrameSender.chunks` puts what was ready in one frame that the api can
write as it is. Frames go through a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.msg import Msg

from llmq.embedded import EmbeddedNats
from llmq.schemas import frames, names
from llmq.schemas.frames import Done
from llmq.schemas.openai import Usage
from llmq.worker import outbound as outbound_module
from llmq.worker.replies import FrameSender, drive


class Recorder:
    """What `drive` did: items taken, and the batches flushed."""

    def __init__(self) -> None:
        self.taken: list[str] = []
        self.flushed: list[list[str]] = []
        self.delivered = asyncio.Event()

    async def take(self, item: str) -> None:
        self.taken.append(item)

    async def flush(self) -> None:
        if self.taken:
            self.flushed.append(self.taken.copy())
            self.taken.clear()
            self.delivered.set()


async def test_items_ready_together_go_in_one_flush() -> None:
    gate = asyncio.Event()

    async def produce() -> AsyncIterator[str]:
        for item in ("a", "b", "c"):
            yield item
        await gate.wait()  # the next "socket read"
        yield "d"
        yield "e"

    seen = Recorder()
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, gate.set)
    await asyncio.wait_for(drive(produce(), seen.take, seen.flush), 10)
    assert seen.flushed == [["a", "b", "c"], ["d", "e"]]


async def test_nothing_waits_for_the_next_item() -> None:
    """The producer waits for a signal the consumer only gives once it holds "a": had "a"
    been kept back for company, this would never finish."""
    seen = Recorder()

    async def produce() -> AsyncIterator[str]:
        yield "a"
        await seen.delivered.wait()
        yield "b"

    await asyncio.wait_for(drive(produce(), seen.take, seen.flush), 10)
    assert seen.flushed == [["a"], ["b"]]


async def test_cancelling_while_the_producer_waits_unwinds_it() -> None:
    cleaned = asyncio.Event()
    seen = Recorder()

    async def produce() -> AsyncIterator[str]:
        try:
            yield "a"
            await asyncio.Event().wait()
            yield "never"
        finally:
            cleaned.set()

    task = asyncio.create_task(drive(produce(), seen.take, seen.flush))
    await asyncio.wait_for(seen.delivered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set() and seen.flushed == [["a"]]


async def test_a_failing_flush_unwinds_the_waiting_producer_and_propagates() -> None:
    cleaned = asyncio.Event()

    async def produce() -> AsyncIterator[str]:
        try:
            yield "a"
            await asyncio.sleep(0.01)
            yield "b"
        finally:
            cleaned.set()

    async def take(item: str) -> None:
        pass

    async def flush() -> None:
        raise ConnectionError("nats went away")

    with pytest.raises(ConnectionError, match="nats went away"):
        await asyncio.wait_for(drive(produce(), take, flush), 10)
    assert cleaned.is_set()


async def test_a_producer_error_propagates_after_what_was_ready() -> None:
    seen = Recorder()

    async def produce() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(0)
        raise ValueError("upstream broke")

    with pytest.raises(ValueError, match="upstream broke"):
        await asyncio.wait_for(drive(produce(), seen.take, seen.flush), 10)
    assert seen.flushed == [["a"]]


async def test_a_timeout_around_the_wait_still_fires() -> None:
    seen = Recorder()

    async def produce() -> AsyncIterator[str]:
        yield "a"
        async with asyncio.timeout(0.05):
            await asyncio.Event().wait()
        yield "never"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(drive(produce(), seen.take, seen.flush), 10)
    assert seen.flushed == [["a"]]


async def test_chunks_share_a_frame_the_api_writes_as_it_is(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    received: list[Msg] = []
    sub = await nc.subscribe("_INBOX.replies-test.>", cb=_append(received))
    sender = FrameSender(nc, "_INBOX.replies-test.j1", "w1")
    chunks = [b'{"n":%d}' % i for i in range(5)]
    await sender.chunks(chunks[:3])
    await sender.chunks([b'{"multi":"line\n"}', chunks[3]])  # a line break: sent alone
    await sender.chunks([chunks[4]])
    await nc.flush()
    await _until(lambda: len(received) == 4)
    await sub.unsubscribe()
    await nc.close()
    heads = [(m.headers or {}) for m in received]
    assert [h[names.H_FRAME] for h in heads] == [frames.CHUNK] * 4
    assert [h[names.H_SEQ] for h in heads] == ["0", "1", "2", "3"]
    assert [h.get(names.H_CHUNKS) for h in heads] == ["3", None, None, None]
    first = received[0].data
    assert b"data: " + first + b"\n\n" == b"".join(b"data: %s\n\n" % c for c in chunks[:3])
    assert frames.split_chunks(first) == chunks[:3]
    assert [frames.split_chunks(m.data) for m in received[1:]] == [
        [b'{"multi":"line\n"}'],
        [chunks[3]],
        [chunks[4]],
    ]


async def test_a_large_batch_is_split_under_the_payload_limit(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    received: list[Msg] = []
    sub = await nc.subscribe("_INBOX.replies-big.>", cb=_append(received))
    sender = FrameSender(nc, "_INBOX.replies-big.j1", "w1")
    piece = b'"' + b"x" * 60_000 + b'"'
    count = (nc.max_payload // 60_000) + 5  # more than one payload's worth
    await sender.chunks([piece] * count)
    await nc.flush()
    limit = nc.max_payload
    await _until(lambda: sum(len(frames.split_chunks(m.data)) for m in received) == count)
    await sub.unsubscribe()
    await nc.close()
    assert len(received) > 1 and all(len(m.data) <= limit for m in received)


async def test_a_later_delivery_names_itself_on_every_frame(nats_server: EmbeddedNats) -> None:
    """The first delivery's frames carry no `Llmq-Attempt` (nothing more on the hot path);
    a later delivery's carry its number on every frame, so the api can tell them from an
    earlier delivery's that still runs (dispatcher/reply_machine.py)."""
    nc = await nats.connect(nats_server.url)
    received: list[Msg] = []
    sub = await nc.subscribe("_INBOX.replies-attempt.>", cb=_append(received))
    for job, attempt in (("j1", 1), ("j2", 2)):
        sender = FrameSender(nc, f"_INBOX.replies-attempt.{job}", "w1")
        await sender.accepted(attempt)
        await sender.chunk(b'{"n":1}')
        await sender.ping()
        await sender.done(frames.Done(usage=Usage()))
    await nc.flush()
    await _until(lambda: len(received) == 8)
    await sub.unsubscribe()
    await nc.close()
    heads = [(m.headers or {}) for m in received]
    assert [h.get(names.H_ATTEMPT) for h in heads] == [None] * 4 + ["2"] * 4
    assert [h[names.H_SEQ] for h in heads] == ["0", "1", "2", "3"] * 2


def _append(into: list[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def callback(msg: Msg) -> None:
        into.append(msg)

    return callback


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_final_frame_is_written_before_the_sender_goes_on(
    nats_server: EmbeddedNats,
) -> None:
    """The client waits on `done`: it is handed to the socket before `done` returns, so the
    job's ack, usage report and metrics (the runner's next steps) do not hold it back."""
    nc = await nats.connect(nats_server.url)
    received: list[Msg] = []
    sub = await nc.subscribe("_INBOX.replies-final.>", cb=_append(received))
    sender = FrameSender(nc, "_INBOX.replies-final.j1", "w1")
    await sender.accepted(1)
    await sender.done(Done(usage=Usage(1, 1, 2), finish_reason="stop"))
    assert nc.pending_data_size == 0  # written, not waiting for the flusher's next turn
    await _until(lambda: len(received) == 2)
    await sub.unsubscribe()
    await nc.close()
    assert [(m.headers or {})[names.H_FRAME] for m in received] == [frames.ACCEPTED, frames.DONE]


async def test_a_ping_while_a_chunk_waits_for_backpressure_is_numbered_before_it(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen beside two busy loops: a chunk waited for NATS to take the bytes before it
    (`Outbound.settle`) with its number already given, the keep-alive's ping went out
    meanwhile with the next one, and the api saw a gap (502 `frames_lost`). A frame is
    numbered only once it may go: the ping takes the number, the chunk the one after."""
    nc = await nats.connect(nats_server.url)
    received: list[Msg] = []
    sub = await nc.subscribe("_INBOX.replies-order.>", cb=_append(received))
    sender = FrameSender(nc, "_INBOX.replies-order.j1", "w1")
    await sender.accepted(1)
    gate = asyncio.Event()

    async def congested() -> None:  # NATS is slow to take what is pending
        await gate.wait()

    monkeypatch.setattr(sender._out, "settle", congested)
    monkeypatch.setattr(outbound_module.fast_nats, "outbound_bytes", lambda _nc: 1 << 30)
    chunk = asyncio.create_task(sender.chunk(b'{"n":1}'))
    await asyncio.sleep(0.05)
    assert not chunk.done()  # held back by the congestion
    await asyncio.wait_for(sender.ping(), 5)  # a few bytes: not held behind it
    gate.set()
    await asyncio.wait_for(chunk, 5)
    await nc.flush()
    await _until(lambda: len(received) == 3)
    await sub.unsubscribe()
    await nc.close()
    heads = [(m.headers or {}) for m in received]
    assert [(h[names.H_FRAME], h[names.H_SEQ]) for h in heads] == [
        (frames.ACCEPTED, "0"),
        (frames.PING, "1"),
        (frames.CHUNK, "2"),
    ]
