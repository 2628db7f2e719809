"""Backpressure on a worker's reply frames (worker/outbound.py), against a real nats-server:
a worker whose link to NATS drops while it produces at full speed waits for the link to
come back instead of overrunning nats-py's outbound buffer, and every frame arrives, in
order; at full speed on a live link the unsent bytes stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
from nats.aio.msg import Msg

from llmq._fast import nats as fast_nats
from llmq.dispatcher.connection import connect
from llmq.embedded import EmbeddedNats, free_port
from llmq.schemas import names
from llmq.worker import outbound as outbound_module
from llmq.worker.replies import FrameSender

CHUNK = b"x" * 32_000
FRAMES = 200
"""6.4 MB: three times what nats-py buffers while it reconnects."""


class Proxy:
    """A TCP relay to nats-server whose connections can be cut (and its port closed) and
    opened again on the same port: one process's link to NATS goes away, nobody else's."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        tasks = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.gather(*tasks)
        self._tasks.difference_update(tasks)


def _port(server: EmbeddedNats) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def _until(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_full_speed_worker_waits_out_a_lost_link_and_loses_no_frame(
    nats_server: EmbeddedNats,
) -> None:
    proxy = Proxy(_port(nats_server))
    await proxy.open()
    api = await nats.connect(nats_server.url)
    seqs: list[int] = []

    async def received(msg: Msg) -> None:
        seqs.append(int(msg.headers[names.H_SEQ]))  # type: ignore[index]

    sub = await api.subscribe("_INBOX.outbound-test.j1", cb=received)
    await api.flush()
    worker = await connect(f"nats://127.0.0.1:{proxy.port}", "worker", reconnect=True)
    sender = FrameSender(worker, "_INBOX.outbound-test.j1", "w1")
    try:
        await sender.accepted(1)
        await worker.flush()
        await _until(lambda: seqs == [0])
        await proxy.cut()
        await _until(lambda: not worker.is_connected)
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, lambda: loop.create_task(proxy.open()))
        async with asyncio.timeout(60):
            for _ in range(FRAMES):
                await sender.chunk(CHUNK)
        await _until(lambda: len(seqs) == FRAMES + 1)
        assert seqs == list(range(FRAMES + 1))
        assert outbound_module.outbound(worker).waits >= 1
    finally:
        await sub.unsubscribe()
        await api.close()
        await worker.close()
        await proxy.cut()


async def test_unsent_bytes_stay_under_the_high_water_mark_at_full_speed(
    nats_server: EmbeddedNats,
) -> None:
    worker = await connect(nats_server.url, "worker", reconnect=True)
    api = await nats.connect(nats_server.url)
    got = 0

    async def received(msg: Msg) -> None:
        nonlocal got
        got += 1

    sub = await api.subscribe("_INBOX.outbound-fast.*", cb=received)
    await api.flush()
    most = 0
    senders = [FrameSender(worker, f"_INBOX.outbound-fast.j{i}", "w1") for i in range(8)]

    async def stream(sender: FrameSender) -> None:
        nonlocal most
        for _ in range(100):
            await sender.chunk(CHUNK)
            most = max(most, fast_nats.outbound_bytes(worker))

    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(stream(s) for s in senders))
        await _until(lambda: got == 800)
        # one frame past the mark per job at most: each checks before it publishes
        assert most <= outbound_module.HIGH_WATER + 8 * (len(CHUNK) + 200)
    finally:
        await sub.unsubscribe()
        await api.close()
        await worker.close()
