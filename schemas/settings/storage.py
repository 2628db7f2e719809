"""Bounds of what llmq keeps: per open stream in an api's memory; one byte bound per
JetStream stream, KV bucket and object store (`LLMQ_<STORE>_MAX_BYTES`), besides each one's
age; the length and age of each tenant's usage ledger in Valkey (the global one:
`LLMQ_LEDGER_MAXLEN`). A store at its
bound refuses new messages (discard new): nothing queued or running is dropped to make room;
past `store_evict_water` the api deletes the oldest finished async jobs and batches; new
durable jobs, batches and files are refused with a 507 while a store they write is still
fuller than `store_high_water`. Sizing rules: docs/operations.md, "Bounded memory
and bounded stores"."""

from __future__ import annotations

from typing import ClassVar

from llmq.schemas.settings.base import Command, Group, setting

MiB = 1 << 20
GiB = 1 << 30


def _bound(default: int, what: str) -> int:
    return setting(default, f"Bytes {what} may hold at most.", ge=MiB, commands=())


class StorageSettings(Group):
    """What one api holds for a stream nobody reads; byte bounds of the JetStream streams,
    buckets and object store llmq writes; the tenants' ledgers' length and age."""

    commands: ClassVar[tuple[Command, ...]] = ("api", "worker")

    stream_buffer_bytes: int = setting(
        524_288,
        "Bytes of reply frames the api holds for one stream whose client reads slower than "
        "the job answers (once the socket's write buffer is full); past it the job is "
        "cancelled, what it generated is booked and the client gets an error event.",
        ge=65_536,
        commands=(),
    )
    stream_drain_timeout: float = setting(
        30.0,
        "Seconds a stream cut for stream_buffer_bytes waits for its client to read what "
        "is buffered before the connection is closed.",
        gt=0,
        commands=(),
    )
    malloc_trim_interval: float = setting(
        30.0,
        "Seconds between returns of freed heap memory to the system (glibc malloc_trim; "
        "after bursts of large streams); 0 = never.",
        ge=0,
        commands=(),
    )
    jobs_stream_max_bytes: int = _bound(256 * MiB, "LLMQ_JOBS (interactive jobs, in memory)")
    batch_stream_max_bytes: int = _bound(2 * GiB, "LLMQ_BATCH (queued async and batch jobs)")
    usage_stream_max_bytes: int = _bound(256 * MiB, "LLMQ_USAGE (usage reports not booked)")
    outcomes_stream_max_bytes: int = _bound(2 * GiB, "LLMQ_OUTCOMES (results not collected)")
    webhooks_stream_max_bytes: int = _bound(256 * MiB, "LLMQ_WEBHOOKS (pending deliveries)")
    async_jobs_max_bytes: int = _bound(1 * GiB, "KV LLMQ_ASYNC_JOBS (~500 B per job)")
    results_max_bytes: int = _bound(4 * GiB, "KV LLMQ_RESULTS (a job's or line's result)")
    batches_max_bytes: int = _bound(256 * MiB, "KV LLMQ_BATCHES (~1 KB per batch)")
    file_meta_max_bytes: int = _bound(256 * MiB, "KV of file metadata (~500 B per file)")
    files_max_total_bytes: int = _bound(20 * GiB, "the files object store (all file bodies)")
    responses_max_bytes: int = _bound(4 * GiB, "KV of stored responses")
    conversations_max_bytes: int = _bound(2 * GiB, "KV of conversations")
    registry_max_bytes: int = _bound(
        64 * MiB, "each registry bucket (workers, models, install marker)"
    )
    tenant_ledger_maxlen: int = setting(
        10_000, "Entries kept in each tenant's own usage ledger (Valkey stream).", commands=(), ge=1
    )
    ledger_max_age: float = setting(
        90 * 86_400.0,
        "Seconds a tenant's usage ledger is kept after its last entry (an idle or deleted "
        "tenant's ledger goes then).",
        commands=(),
        gt=0,
    )
    store_high_water: float = setting(
        0.9,
        "New async jobs, batches and files are refused (507 storage_full) while a store they "
        "write is fuller than this share of its bound; the rest is room for the work already "
        "accepted to finish.",
        gt=0,
        le=1,
        commands=(),
    )
    store_evict_water: float = setting(
        0.8,
        "Past this share of the bound of LLMQ_ASYNC_JOBS, LLMQ_RESULTS or LLMQ_BATCHES, the "
        "api deletes the oldest finished async jobs and batches (with their results) until "
        "the bucket is below it again; queued and running ones are never deleted. Keep it "
        "below store_high_water.",
        gt=0,
        le=1,
        commands=(),
    )
