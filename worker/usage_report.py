"""Reporting the final usage of an interactive job for durable booking (docs/protocol.md).

The api that relays a job books its usage from the `done` frame; when that api dies
mid-stream the worker still generates to the end, and this report — one core publish per
job, never flushed on its own, captured on disk by LLMQ_USAGE — lets another api replica
book it (`api.usage_booking`). Async and batch jobs need none: their frames are durable
already (LLMQ_OUTCOMES).
"""

from __future__ import annotations

import contextlib

from nats.aio.client import Client

from llmq.schemas import names
from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.openai import Usage
from llmq.schemas.usage import FinalUsage, cache_counts, usage_encoder

FINAL_OUTCOMES = {"ok": False, "error": True, "upstream_error": True}
"""Outcomes that sent the api a final frame -> whether the job failed. A job handed back
(`retried`) runs again; a `cancelled` one was ended by its api, which booked it."""


async def report_final_usage(nc: Client, job: JobEnvelope, outcome: str, usage: Usage) -> None:
    """Publish the job's final usage on `llmq.usage.<tenant>.<model>`; never raises."""
    failed = FINAL_OUTCOMES.get(outcome)
    if failed is None or job.batch or not job.tenant or not job.id:
        return
    cached, written = cache_counts(usage)
    report = FinalUsage(
        tenant=job.tenant,
        model=job.model,
        job_id=job.id,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        failed=failed,
        cached_tokens=cached,
        cache_write_tokens=written,
        lease=job.lease,
    )
    with contextlib.suppress(Exception):
        await nc.publish(names.usage_subject(job.tenant, job.model), usage_encoder.encode(report))
