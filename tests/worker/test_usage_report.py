"""The worker's final usage report (worker/usage_report.py, issue 12 finding 13) on a real
nats-server: one per interactive job that sent a final frame, none for a job handed back,
cancelled, of the batch stream or of no tenant."""

from __future__ import annotations

import asyncio

import nats

from llmq.embedded import EmbeddedNats
from llmq.schemas import names
from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.openai import Usage
from llmq.schemas.usage import FinalUsage, usage_decoder
from llmq.worker.usage_report import report_final_usage


async def test_one_report_per_finished_interactive_job(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    got: list[tuple[str, FinalUsage]] = []

    async def collect(msg: nats.aio.msg.Msg) -> None:
        got.append((msg.subject, usage_decoder.decode(msg.data)))

    await nc.subscribe(f"{names.USAGE_PREFIX}.>", cb=collect)
    job = JobEnvelope(id="job-1", model="llama3:8b", tenant="acme", reply="_INBOX.a.job-1")
    usage = Usage(7, 11, 18)
    await report_final_usage(nc, job, "ok", usage)
    await report_final_usage(
        nc, JobEnvelope(id="job-2", model="m", tenant="acme"), "error", Usage()
    )
    for outcome in ("retried", "cancelled", "expired"):  # no final frame, or the api booked it
        await report_final_usage(nc, job, outcome, usage)
    batch = JobEnvelope(id="job-3", model="m", tenant="acme", batch=True)  # LLMQ_OUTCOMES books
    await report_final_usage(nc, batch, "ok", usage)
    anonymous = JobEnvelope(id="job-4", model="m")  # nothing was reserved
    await report_final_usage(nc, anonymous, "ok", usage)
    await nc.flush()
    await asyncio.sleep(0.2)
    assert got == [
        (
            names.usage_subject("acme", "llama3:8b"),
            FinalUsage("acme", "llama3:8b", "job-1", 7, 11, failed=False),
        ),
        (names.usage_subject("acme", "m"), FinalUsage("acme", "m", "job-2", 0, 0, failed=True)),
    ]
    await nc.close()
    # A closed connection never raises out of the worker's `finally`.
    await report_final_usage(nc, job, "ok", usage)
