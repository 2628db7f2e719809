"""Deleting everything a tenant scope holds in JetStream: its files, its async jobs with
their results, its batches with their line results.

Run when a tenant is deleted. The scope's id is never given out again, so what a purge
misses (a batch still finishing writes its output later) stays unreachable; the purge
only frees the space.
"""

from __future__ import annotations

import logging

from nats.js.kv import KeyValue

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.files import FileStore
from llmq.schemas import names

log = logging.getLogger(__name__)


async def purge_scope(
    scope: str, files: FileStore, jobs: KeyValue, batches: KeyValue, results: KeyValue
) -> dict[str, int]:
    """How many files, jobs and batches of `scope` were deleted."""
    pattern = names.tenant_keys_pattern(scope)
    job_keys = await kvs.scan(jobs, pattern, meta_only=True)
    for key in job_keys:
        await results.purge(names.job_results_key(key.split(".", 1)[1]))
        await jobs.purge(key)
    batch_keys = await kvs.scan(batches, pattern, meta_only=True)
    for key in batch_keys:
        batch_hex = key.split(".", 1)[1]
        lines = await kvs.scan(results, names.line_results_key(batch_hex), meta_only=True)
        for line in lines:
            await results.purge(line)
        await batches.purge(key)
    counts = {
        "files": await files.purge(scope),
        "jobs": len(job_keys),
        "batches": len(batch_keys),
    }
    log.info("purged the data of a deleted tenant: %s", counts)
    return counts
