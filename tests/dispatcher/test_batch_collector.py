"""The results collector on a real nats-server: the first result wins, usage is released
once per frame, async jobs are settled, and a job that ran out of deliveries gets a
`worker_lost` result from the server's advisory."""

from __future__ import annotations

import contextlib

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, StorageType

from llmq.dispatcher import kv as kvs
from llmq.dispatcher import streams
from llmq.dispatcher.batch.collector import ResultCollector
from llmq.dispatcher.batch.records import Unrun, line_job_id, result_decoder, time_hex
from llmq.dispatcher.connection import connect
from llmq.dispatcher.jobs import JobSpec
from llmq.schemas import frames, names
from llmq.schemas.admission import JobUsage, Refusal, Reservation
from llmq.schemas.frames import Done, Failed, frame_encoder
from llmq.schemas.openai import Usage
from tests.stack import unique, wait_for


class Books:
    def __init__(self) -> None:
        self.released: list[tuple[str, str, str, int, int, bool]] = []

    async def reserve(
        self,
        tenant: str,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        job_id: str,
        *,
        key_id: str = "",
    ) -> Reservation | Refusal:
        return Reservation(tenant, model, job_id)

    async def release(self, reservation: Reservation, usage: JobUsage) -> None:
        self.released.append(
            (
                reservation.tenant,
                reservation.model,
                reservation.job_id,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.failed,
            )
        )


async def test_first_result_wins_and_advisories_become_results(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc = await connect(nats_server.url, "test")
    js = nc.jetstream()
    await streams.ensure_streams(js, 900)
    await streams.ensure_batch_streams(js, 3600)
    results = await js.create_key_value(
        KeyValueConfig(bucket=unique("R"), history=1, storage=StorageType.FILE)
    )
    books = Books()
    accepted: list[str] = []
    settled: list[str] = []

    async def on_accepted(tenant: str, job: str) -> None:
        accepted.append(job)

    async def on_result(tenant: str, job: str) -> None:
        settled.append(job)

    collector = ResultCollector(js, results, books, on_accepted, on_result)
    collector.start()
    try:
        batch, model = time_hex(), unique("c")
        line = line_job_id(batch, 1)
        subject = names.outcome_subject("acme", model, line)
        done = frame_encoder.encode(Done(usage=Usage(3, 4, 7)))
        other = frame_encoder.encode(Done(usage=Usage(9, 9, 18)))
        for data in (done, other):  # a job that ran twice
            await nc.publish(subject, data, headers={names.H_FRAME: frames.DONE, names.H_SEQ: "1"})
        await nc.publish(subject, b"", headers={names.H_FRAME: frames.PING, names.H_SEQ: "2"})
        job = time_hex()
        job_subject = names.outcome_subject("", model, job)
        await nc.publish(job_subject, b"{}", headers={names.H_FRAME: frames.ACCEPTED})
        await nc.publish(
            job_subject,
            frame_encoder.encode(Done(usage=Usage())),
            headers={names.H_FRAME: frames.DONE},
        )
        await wait_for(lambda: len(books.released) == 3 and settled == [job], timeout=5)
        stored = await kvs.read_raw(results, names.line_results_key(batch, 1))
        assert stored == done
        assert ("acme", model, line, 3, 4, False) in books.released
        assert accepted == [job]  # batch lines are not "accepted" into a job record

        # A batch job whose workers all die: max_deliver 2, never acked.
        consumer = await streams.ensure_consumer(js, names.BATCH_STREAM, model, 0.3, 2)
        lost = line_job_id(batch, 2)
        spec = JobSpec(lost, model, b"{}", "acme", 0, batch=True)
        await js.publish(
            spec.subject, b"{}", headers=spec.headers(names.outcome_subject("acme", model, lost))
        )
        sub = await js.pull_subscribe_bind(consumer, names.BATCH_STREAM)
        for _ in range(2):
            (_msg,) = await sub.fetch(1, timeout=2)  # taken, then the worker "dies"
        # The server gives up (and advises) when it would deliver a third time.
        with contextlib.suppress(NatsTimeoutError):
            await sub.fetch(1, timeout=1)

        async def lost_result() -> bool:
            return await kvs.read_raw(results, names.line_results_key(batch, 2)) is not None

        await wait_for(lost_result, timeout=5)
        raw = await kvs.read_raw(results, names.line_results_key(batch, 2))
        assert raw is not None
        result = result_decoder.decode(raw)
        assert isinstance(result, Failed) and result.status == 502
        assert result.error.code == "worker_lost" and not isinstance(result, Unrun)

        async def removed_from_the_queue() -> bool:  # right after the result is stored
            info = await js.consumer_info(names.BATCH_STREAM, consumer)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(removed_from_the_queue, timeout=5)
        await sub.unsubscribe()
    finally:
        await collector.stop()
        await nc.close()
