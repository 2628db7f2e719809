"""A job's mailbox: items in order, a bounded wait that ends with None and never early for
a steady stream, and one timer per job that is not re-armed for every frame."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from nats.aio.msg import Msg

from llmq._fast import configure as configure_fast_paths
from llmq.dispatcher.connection import connect, disconnect
from llmq.dispatcher.inbox import FRAME_OVERHEAD, Mailbox, ReplyInbox, Signal
from tests.stack import unique, wait_for

pytestmark = pytest.mark.usefixtures("fast_paths_on")  # tests of the shortcuts themselves


async def test_items_come_in_order_and_a_waiting_reader_is_woken() -> None:
    box = Mailbox()
    box.put_nowait(Signal.MISSING)
    box.put_nowait(Signal.EXHAUSTED)
    assert await box.get(1.0) is Signal.MISSING
    assert await box.get(1.0) is Signal.EXHAUSTED
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, box.put_nowait, Signal.MISSING)
    started = loop.time()
    assert await box.get(10.0) is Signal.MISSING
    assert loop.time() - started < 5.0
    box.close()


async def test_a_silent_wait_ends_with_none_after_its_bound() -> None:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await box.get(0.2) is None
    assert loop.time() - started >= 0.2 - 0.01  # the loop's clock resolution at most
    box.close()


async def test_a_steady_stream_keeps_one_timer_and_the_bound_moves_with_it() -> None:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    timers: set[int] = set()
    for _ in range(8):  # an item every 0.1 s, each wait bounded at 0.3 s: never times out
        loop.call_later(0.1, box.put_nowait, Signal.MISSING)
        assert await box.get(0.3) is Signal.MISSING
        assert box._timer is not None
        timers.add(id(box._timer))
    # the first timer fired early twice at most (0.3 s into 0.8 s) and re-armed itself;
    # not one timer per item
    assert len(timers) <= 4
    started = loop.time()
    assert await box.get(0.3) is None  # silence after the stream: the bound still holds
    assert loop.time() - started >= 0.3 - 0.01
    box.close()
    assert box._timer is None


async def test_a_shorter_wait_than_the_armed_timer_re_arms_at_once() -> None:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, box.put_nowait, Signal.MISSING)
    assert await box.get(30.0) is Signal.MISSING  # a timer for 30 s stays armed
    started = loop.time()
    assert await box.get(0.1) is None
    assert loop.time() - started < 5.0
    box.close()


async def test_a_stall_of_the_loop_is_not_taken_for_the_jobs_silence() -> None:
    """The process stands still (a full garbage collection) past the bound while a frame
    arrives; the frame is read a few loop turns after the timer fired late. The wait gets
    it, instead of ending as if the worker had gone silent."""
    import time

    box = Mailbox()
    loop = asyncio.get_running_loop()

    def stall_then_deliver() -> None:
        time.sleep(0.6)  # the loop stands still past the 0.3 s bound
        # the frame reaches the mailbox some turns later (nats-py's reader task, its parser,
        # the subscription's task: each a turn of the loop)
        later(4)

    def later(turns: int) -> None:
        if turns:
            loop.call_soon(later, turns - 1)
        else:
            box.put_nowait(Signal.MISSING)

    loop.call_later(0.05, stall_then_deliver)
    assert await box.get(0.3) is Signal.MISSING
    # a second, real silence still ends the wait
    started = loop.time()
    assert await box.get(0.2) is None
    assert loop.time() - started < 5.0
    box.close()


async def test_the_publish_ack_is_kept_apart_from_the_frames() -> None:
    """`ack` takes JetStream's reply to the publish whatever came first; frames stay for
    `get`, which never returns the ack."""
    box = Mailbox()
    loop = asyncio.get_running_loop()
    frame = Msg(None, subject="_INBOX.i.j", headers={"Llmq-Frame": "accepted"})  # type: ignore[arg-type]
    ack = Msg(None, subject="_INBOX.i.j", data=b'{"stream":"S","seq":1}')  # type: ignore[arg-type]
    loop.call_later(0.02, box.put_nowait, frame)
    loop.call_later(0.05, box.put_ack, ack)
    assert await box.ack(10.0) is ack
    assert await box.get(0.05) is frame
    assert await box.get(0.05) is None
    started = loop.time()
    assert await box.ack(0.1) is None  # taken: a second wait ends at its bound
    assert 0.1 - 0.01 <= loop.time() - started < 5.0
    box.close()


async def test_the_inbox_routes_acks_and_frames(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc = await connect(nats_server.url, "test-inbox")
    inbox = ReplyInbox(nc, unique("i"))
    await inbox.start()
    try:
        box = inbox.open("job1")
        subject = inbox.subject("job1")
        await nc.publish(subject, b"x", headers={"Llmq-Frame": "chunk", "Llmq-Seq": "1"})
        await nc.publish(subject, b'{"stream":"S","seq":3}')  # as JetStream acks
        first = await box.ack(10.0)
        assert first is not None and first.data == b'{"stream":"S","seq":3}'
        await nc.publish(subject, b"", headers={"Status": "503"})  # as no responders
        second = await box.ack(10.0)
        assert second is not None and second.headers == {"Status": "503"}
        frame = await box.get(10.0)
        assert isinstance(frame, Msg) and frame.data == b"x"
        assert await box.get(0.05) is None
    finally:
        await inbox.stop()
        await disconnect(nc)


async def test_frames_reach_the_mailbox_from_the_read_loop_and_orphans_are_cancelled(
    nats_server,  # type: ignore[no-untyped-def]
) -> None:
    """No subscription task sits between nats-py's read loop and the mailboxes; a frame for a
    job nobody waits for makes the inbox cancel that job, once."""
    nc = await connect(nats_server.url, "test-inbox-direct")
    inbox = ReplyInbox(nc, unique("i"))
    await inbox.start()
    cancels = await nc.subscribe("llmq.cancel.>")
    try:
        assert inbox._sub is not None and inbox._sub._wait_for_msgs_task is None
        box = inbox.open("job2")
        for seq in range(50):
            await nc.publish(
                inbox.subject("job2"),
                b"%d" % seq,
                headers={"Llmq-Frame": "chunk", "Llmq-Seq": str(seq)},
            )
        got = []
        for _ in range(50):
            frame = await box.get(10.0)
            assert isinstance(frame, Msg)
            got.append(int(frame.data))
        assert got == list(range(50))
        assert inbox._sub.pending_msgs == 0 and inbox._sub._pending_size == 0
        for _ in range(2):
            await nc.publish(inbox.subject("gone"), b"x", headers={"Llmq-Frame": "chunk"})
        cancel = await cancels.next_msg(timeout=10.0)
        assert cancel.subject == "llmq.cancel.gone"
        await nc.flush()
        await asyncio.sleep(0.2)
        assert cancels.pending_msgs == 0  # the second orphan frame did not cancel again
    finally:
        await cancels.unsubscribe()
        await inbox.stop()
        await disconnect(nc)


def _chunk(size: int) -> Msg:
    return Msg(None, subject="_INBOX.i.j", data=b"c" * size, headers={"Llmq-Frame": "chunk"})  # type: ignore[arg-type]


async def test_a_mailbox_holds_frames_up_to_its_bound_then_overflows_once() -> None:
    """Frames past `limit` bytes (overhead included) are dropped; the reader gets what was
    buffered, then `Signal.OVERFLOW`, once; read frames give their bytes back."""
    per = 1_000 + FRAME_OVERHEAD
    box = Mailbox(limit=5 * per)
    hits = [box.put_frame(_chunk(1_000)) for _ in range(8)]
    assert hits == [False] * 5 + [True, False, False]  # only the first drop reports
    assert box.overflowed and box.buffered == 6  # five frames and the signal
    items = [await box.get(0.1) for _ in range(6)]
    assert all(isinstance(item, Msg) for item in items[:5])
    assert items[5] is Signal.OVERFLOW
    assert await box.get(0.05) is None  # later frames were dropped, not kept
    box.close()


async def test_a_mailbox_read_as_fast_as_it_fills_never_overflows() -> None:
    box = Mailbox(limit=2 * (1_000 + FRAME_OVERHEAD))
    for _ in range(1_000):
        assert not box.put_frame(_chunk(1_000))
        assert isinstance(await box.get(0.1), Msg)
    assert not box.overflowed
    # one frame larger than the bound is taken while nothing is buffered (a whole answer)
    assert not box.put_frame(_chunk(50_000))
    box.close()


async def test_stopping_the_inbox_is_quiet_and_bounded_when_nats_is_away(own_nats) -> None:  # type: ignore[no-untyped-def]
    """A shutdown while NATS reconnects, or after the client closed, must not raise (nats-py's
    `unsubscribe` raises `ConnectionClosedError` on a closed client) nor wait for the server."""
    nc = await connect(own_nats.url, "test-inbox-away")
    reconnecting, closed = ReplyInbox(nc, unique("i")), ReplyInbox(nc, unique("i"))
    await reconnecting.start()
    await closed.start()
    own_nats.stop()
    await wait_for(lambda: not nc.is_connected, timeout=30.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await reconnecting.stop()
    assert reconnecting._sub is None and loop.time() - started < 5.0
    with contextlib.suppress(ConnectionResetError):  # nats-py flushes to the dead socket
        await nc.close()
    assert nc.is_closed
    await closed.stop()
    assert closed._sub is None


@pytest.mark.parametrize("on", [True, False])
async def test_caught_up_returns_once_every_frame_nats_held_is_in_its_mailbox(
    on: bool,
    nats_server,  # type: ignore[no-untyped-def]
) -> None:
    """What a job's silence is judged after (dispatcher/reply_machine.py, `CHECK`): frames
    that queued in NATS behind other bytes while the api read slowly are all in their
    mailbox when `caught_up` returns, with the shortcuts on or off."""
    configure_fast_paths(on)
    nc = await connect(nats_server.url, "test-inbox-caught-up")
    sender = await connect(nats_server.url, "test-inbox-caught-up-sender")
    inbox = ReplyInbox(nc, unique("i"))
    await inbox.start()
    await nc.flush()  # NATS has the subscription before the first frame
    try:
        box = inbox.open("job")
        for _ in range(2_000):  # 20 MB
            await sender.publish(
                inbox.subject("job"), b"c" * 10_000, headers={"Llmq-Frame": "chunk"}
            )
        # nats-py writes a flush's PING ahead of the publishes still in its buffer: flushed
        # until the buffer is empty, then once more, NATS holds them all for `nc`
        async with asyncio.timeout(60):
            while sender.pending_data_size:
                await sender.flush()
            await sender.flush()
        await inbox.caught_up(60.0)
        assert box.buffered == 2_000
    finally:
        await inbox.stop()
        await disconnect(sender)
        await disconnect(nc)
