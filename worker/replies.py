"""Sending reply frames to the api: numbered, on core NATS, never flushed per frame."""

from __future__ import annotations

import time

from nats.aio.client import Client

from llmq.schemas import frames, names
from llmq.schemas.frames import Accepted, Done, Failed, frame_encoder


class FrameSender:
    """The frames of one job attempt, numbered from 0 (`accepted`) so the api sees any gap."""

    __slots__ = ("_nc", "_reply", "_seq", "last_sent", "worker_id")

    def __init__(self, nc: Client, reply: str, worker_id: str) -> None:
        self._nc = nc
        self._reply = reply
        self._seq = 0
        self.worker_id = worker_id
        self.last_sent = time.monotonic()

    async def _send(self, kind: str, data: bytes, extra: dict[str, str] | None = None) -> None:
        headers = {names.H_FRAME: kind, names.H_SEQ: str(self._seq)}
        if extra:
            headers.update(extra)
        self._seq += 1
        self.last_sent = time.monotonic()
        await self._nc.publish(self._reply, data, headers=headers)

    async def accepted(self, attempt: int) -> None:
        body = frame_encoder.encode(Accepted(worker=self.worker_id, attempt=attempt))
        await self._send(frames.ACCEPTED, body, {names.H_WORKER: self.worker_id})

    async def chunk(self, data: bytes) -> None:
        await self._send(frames.CHUNK, data)

    async def ping(self) -> None:
        await self._send(frames.PING, b"")

    async def requeued(self, attempt: int) -> None:
        """Tell the api the job was given back to the queue (it keeps waiting for it)."""
        await self._send(frames.PING, b"", {names.H_REQUEUED: str(attempt)})

    async def done(self, frame: Done) -> None:
        await self._send(frames.DONE, frame_encoder.encode(frame))

    async def failed(self, frame: Failed) -> None:
        await self._send(frames.ERROR, frame_encoder.encode(frame))
