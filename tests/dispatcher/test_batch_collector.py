"""The results collector on a real nats-server: the first result wins, usage is released
once per frame, async jobs are settled, and a job that ran out of deliveries gets a
`worker_lost` result from the server's advisory."""

from __future__ import annotations

import contextlib

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, StorageType

from llmq.api.batch import stores
from llmq.dispatcher import kv as kvs
from llmq.dispatcher import streams
from llmq.dispatcher.batch.collector import MAX_DELIVERIES, RETRY_DELAY, ResultCollector
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
    await stores.ensure_batch_streams(js, 3600)
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


async def test_a_poison_message_ends_with_a_failed_line(nats_server, caplog) -> None:  # type: ignore[no-untyped-def]
    """A final frame that is not a frame, and one the results store refuses (larger than
    the bucket's values may be), are not naked for ever: the first becomes a 502
    `result_unreadable` result at once; the second is given up after `MAX_DELIVERIES`,
    terminated, and its line gets a 500 `result_not_stored` result; one log line each,
    without the body."""
    nc = await connect(nats_server.url, "test")
    js = nc.jetstream()
    await streams.ensure_streams(js, 900)
    await stores.ensure_batch_streams(js, 3600)
    results = await js.create_key_value(
        KeyValueConfig(bucket=unique("R"), history=1, storage=StorageType.FILE, max_value_size=512)
    )
    books = Books()

    async def nothing(tenant: str, job: str) -> None:
        return None

    collector = ResultCollector(js, results, books, nothing, nothing)
    collector.start()
    secret = "PROMPT-BODY-" + "x" * 2000
    try:
        batch, model = time_hex(), unique("c")
        garbled, too_big = line_job_id(batch, 1), line_job_id(batch, 2)
        done = {names.H_FRAME: frames.DONE}
        await nc.publish(
            names.outcome_subject("acme", model, garbled), secret.encode(), headers=done
        )
        big = Done(usage=Usage(3, 4, 7), body=msgspec.Raw(msgspec.json.encode({"t": secret})))
        await nc.publish(names.outcome_subject("acme", model, too_big), frame_encoder.encode(big),
                         headers=done)  # fmt: skip

        async def result(line: int) -> Failed | None:
            raw = await kvs.read_raw(results, names.line_results_key(batch, line))
            decoded = None if raw is None else result_decoder.decode(raw)
            assert decoded is None or isinstance(decoded, Failed)
            return decoded

        await wait_for(lambda: result(1), timeout=10)
        unreadable = await result(1)
        assert unreadable is not None and unreadable.status == 502
        assert unreadable.error.code == "result_unreadable"
        deadline = (MAX_DELIVERIES - 1) * RETRY_DELAY + 30  # generous: a loaded machine
        await wait_for(lambda: result(2), timeout=deadline)
        unstored = await result(2)
        assert unstored is not None and unstored.status == 500
        assert unstored.error.code == "result_not_stored"
        assert ("acme", model, garbled, 0, 0, True) in books.released
        assert ("acme", model, too_big, 0, 0, True) in books.released

        async def settled() -> bool:  # terminated: nothing left to deliver again
            info = await js.consumer_info(names.OUTCOMES_STREAM, names.COLLECTOR_CONSUMER)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(settled, timeout=10)
        gave_up = [r for r in caplog.records if "gave up" in r.getMessage()]
        assert len(gave_up) == 1 and too_big in gave_up[0].getMessage()
        assert f"after {MAX_DELIVERIES} deliveries" in gave_up[0].getMessage()
        assert not any("PROMPT-BODY" in r.getMessage() for r in caplog.records)
    finally:
        await collector.stop()
        await nc.close()
