"""One keep-alive loop per worker: it pings only the jobs that were silent for a whole ping
interval (a chunk counts as a sign of life), keeps unacked jobs in progress, runs one task
for any number of jobs, and stops when no job runs."""

from __future__ import annotations

import asyncio
import time

from llmq.schemas import frames, names
from llmq.worker.keepalive import KeepAlive
from llmq.worker.replies import FrameSender


class FakeNats:
    is_connected = True
    pending_data_size = 0  # nothing ever waits to be sent (`worker.outbound`)

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.sent.append((subject, headers))

    def pings(self, subject: str) -> int:
        return sum(1 for s, h in self.sent if s == subject and h[names.H_FRAME] == frames.PING)


class Ack:
    def __init__(self, done: bool) -> None:
        self.done = done
        self.marked = 0

    async def in_progress(self) -> None:
        self.marked += 1


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_only_silent_jobs_are_pinged_and_chunks_count_as_life() -> None:
    nc = FakeNats()
    keepalive = KeepAlive(ping_interval=0.4)
    streaming = FrameSender(nc, "streaming", "w1")  # type: ignore[arg-type]
    silent = FrameSender(nc, "silent", "w1")  # type: ignore[arg-type]
    unacked, acked = Ack(done=False), Ack(done=True)

    async def stream() -> None:  # a chunk every quarter interval: never silent for a whole one
        while True:
            await streaming.chunk(b"{}")
            await asyncio.sleep(0.1)

    streamer = asyncio.create_task(stream())
    await asyncio.sleep(0)
    keepalive.add(streaming, acked)
    keepalive.add(silent, unacked)
    try:
        await _until(lambda: nc.pings("silent") >= 4)  # about one per interval
    finally:
        streamer.cancel()
    assert nc.pings("streaming") == 0
    assert keepalive.pings_sent == nc.pings("silent")
    assert unacked.marked >= 4 and acked.marked == 0  # only the unacked job is kept ours
    keepalive.remove(streaming)
    keepalive.remove(silent)


async def test_one_task_for_many_jobs_and_none_when_idle() -> None:
    nc = FakeNats()
    keepalive = KeepAlive(ping_interval=0.1)
    # The tasks `add` starts, told apart from the session loop's others (a previous test's
    # connections may still be closing): nothing else can start between the two reads.
    before = set(asyncio.all_tasks())
    senders = [FrameSender(nc, f"job{i}", "w1") for i in range(200)]  # type: ignore[arg-type]
    for sender in senders:
        keepalive.add(sender, Ack(done=True))
    started = set(asyncio.all_tasks()) - before
    assert len(started) == 1  # one loop for 200 jobs
    (loop,) = started
    await _until(lambda: all(nc.pings(f"job{i}") >= 1 for i in range(200)))
    for sender in senders:
        keepalive.remove(sender)
    await _until(loop.done)  # the loop ends with the jobs
    pinged = len(nc.sent)
    await asyncio.sleep(0.3)
    assert len(nc.sent) == pinged  # nothing runs, nothing is sent
    again = FrameSender(nc, "again", "w1")  # type: ignore[arg-type]
    keepalive.add(again, Ack(done=True))  # a new job starts the loop again
    await _until(lambda: nc.pings("again") >= 1)
    keepalive.remove(again)
