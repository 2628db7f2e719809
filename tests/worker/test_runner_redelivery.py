"""A job JetStream redelivers to the worker still running it (the worker stalled past the ack
wait) runs once: the running attempt takes over the newest delivery, keeps it in progress,
and ends it as it would have ended its own: acked when done, terminated when cancelled,
handed back when the worker stops, so JetStream never hands the job out twice and never loses
it. Against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from llmq.dispatcher import streams
from llmq.schemas import frames, names
from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.frames import Done, frame_decoder
from llmq.schemas.openai import Usage
from llmq.worker.backends.base import Call, Out, ReplyTo
from llmq.worker.chunks import ChatChunks
from llmq.worker.delivery import delivered
from llmq.worker.runner import JobOutcome, JobRunner
from tests.stack import unique, wait_for

ACK_WAIT = 1.5
PING = 0.3  # the keep-alive marks the job in progress every 0.15 s, well inside ACK_WAIT


class Held:
    """A chat backend that holds every call until `release` is set; counts calls and stops."""

    kinds = frozenset({"chat"})

    def __init__(self) -> None:
        self.calls = 0
        self.stopped = 0
        self.release = asyncio.Event()

    def chat(self, call: Call) -> AsyncIterator[Out]:
        self.calls += 1
        return self._outs(call)

    async def _outs(self, call: Call) -> AsyncIterator[Out]:
        reply = call.reply
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.stopped += 1
            raise
        chunks = ChatChunks(ReplyTo(reply.id, reply.model, reply.created))
        yield chunks.delta(0, content="once")
        yield chunks.finish(0, "stop")
        yield chunks.end(Usage(1, 1, 2), "stop")


@pytest.mark.parametrize("ending", ["done", "cancelled", "handed_back"])
async def test_a_redelivery_of_a_running_job_joins_it(nats_server, ending: str) -> None:  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_server.url)
    backend, outcomes = Held(), list[JobOutcome]()
    runner = JobRunner(nc, backend, "w1", {}, PING, max_deliver=5, on_outcome=outcomes.append)  # type: ignore[arg-type]
    try:
        js = nc.jetstream()
        await streams.ensure_stream(js, streams.jobs_stream_config(max_age=60.0))
        model = unique("redeliver")
        durable = await streams.ensure_consumer(js, names.JOBS_STREAM, model, ACK_WAIT, 5)
        pull = await js.pull_subscribe_bind(durable, names.JOBS_STREAM)
        reply = unique("reply")
        replies = await nc.subscribe(reply)
        job = JobEnvelope(id=unique("job"), model=model, reply=reply)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        await js.publish(job.subject, json.dumps(body).encode(), headers=job.to_headers())

        [first] = await pull.fetch(1, timeout=10)
        running = asyncio.create_task(runner.run(first))
        await wait_for(lambda: backend.calls == 1, timeout=10)
        # The worker stalls: no keep-alive runs and the ack wait runs out.
        time.sleep(ACK_WAIT + 0.5)  # noqa: ASYNC251
        [again] = await pull.fetch(1, timeout=10)
        assert delivered(again) == 2 and (again.headers or {}).get(names.H_JOB) == job.id
        await asyncio.wait_for(runner.run(again), timeout=10)  # returns: nothing new started
        assert backend.calls == 1 and runner.tasks[job.id] is running and not running.done()

        # The running attempt keeps the redelivery in progress: nothing comes for 2 ack waits.
        with pytest.raises(NatsTimeout):
            await pull.fetch(1, timeout=2 * ACK_WAIT + 0.5)

        if ending == "done":
            backend.release.set()
        elif ending == "cancelled":
            runner.cancel(job.id)
        else:
            runner.shutting_down = True
            running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=10)
        assert backend.calls == 1 and runner.tasks == {} and runner.acks == {}
        assert [o.outcome for o in outcomes] == [
            {"done": "ok", "cancelled": "cancelled", "handed_back": "retried"}[ending]
        ]

        if ending == "handed_back":  # given back, not lost: the next fetch gets it at once
            [third] = await pull.fetch(1, timeout=10)
            assert delivered(third) == 3 and (third.headers or {}).get(names.H_JOB) == job.id
            await third.term()
        else:  # acked or terminated: JetStream hands it to nobody again
            with pytest.raises(NatsTimeout):
                await pull.fetch(1, timeout=ACK_WAIT + 1)

        async def settled() -> bool:
            info = await js.consumer_info(names.JOBS_STREAM, durable)
            return (info.num_ack_pending, info.num_pending) == (0, 0)

        await wait_for(settled, timeout=10)

        sent = [m async for m in _drain(replies)]
        done = [m for m in sent if (m.headers or {}).get(names.H_FRAME) == frames.DONE]
        if ending == "done":
            [frame] = [frame_decoder.decode(m.data) for m in done]
            assert isinstance(frame, Done) and frame.body is not None
            assert json.loads(bytes(frame.body))["choices"][0]["message"]["content"] == "once"
        else:
            assert done == [] and backend.stopped == 1
    finally:
        backend.release.set()
        task = runner.keepalive._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await nc.close()


async def _drain(sub: Any) -> AsyncIterator[Any]:
    """Every message the subscription holds now."""
    while True:
        try:
            yield await sub.next_msg(timeout=0.2)
        except NatsTimeout:
            return
