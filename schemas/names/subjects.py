"""What llmq names on NATS: model names in subjects, streams and subjects, key-value
buckets and their keys, the async-job and batch subjects, the job's headers."""

from __future__ import annotations

import string

# --- model names in subjects -------------------------------------------------------------

_SAFE = frozenset(string.ascii_letters + string.digits + "_-")


def escape_model(model: str) -> str:
    """Turn a model name into one subject token: keep [A-Za-z0-9_-], percent-escape the rest.

    The escape is applied to the UTF-8 bytes, so every name maps to exactly one token and
    `unescape_model` restores it: `gpt-4.1` -> `gpt-4%2E1`,
    `llama3:instruct` -> `llama3%3Ainstruct`.
    """
    if not model:
        raise ValueError("model name must not be empty")
    out: list[str] = []
    for ch in model:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


def unescape_model(token: str) -> str:
    """Inverse of `escape_model`."""
    raw = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "%":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(ch.encode())
            i += 1
    return raw.decode()


# --- streams and subjects ----------------------------------------------------------------

JOBS_STREAM = "LLMQ_JOBS"
"""Interactive jobs: memory storage, work-queue retention, short max_age."""
BATCH_STREAM = "LLMQ_BATCH"
"""Async and batch jobs: file storage, work-queue retention, durable."""

JOBS_PREFIX = "llmq.jobs"
BATCH_PREFIX = "llmq.batch"
CANCEL_PREFIX = "llmq.cancel"


def jobs_subject(model: str) -> str:
    return f"{JOBS_PREFIX}.{escape_model(model)}"


def batch_subject(model: str) -> str:
    return f"{BATCH_PREFIX}.{escape_model(model)}"


def cancel_subject(job_id: str) -> str:
    return f"{CANCEL_PREFIX}.{job_id}"


CANCEL_WILDCARD = f"{CANCEL_PREFIX}.*"


def max_deliveries_advisory(stream: str) -> str:
    """JetStream's advisory when a job of `stream` used up its deliveries (any consumer)."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*"


def consumer_name(stream: str, model: str) -> str:
    """Durable pull consumer shared by every worker of `model` on `stream`."""
    kind = "jobs" if stream == JOBS_STREAM else "batch"
    return f"{kind}-{escape_model(model)}"


def inbox_prefix(instance: str) -> str:
    """Reply subjects of one api instance: `_INBOX.<instance>.<job-id>`."""
    return f"_INBOX.{instance}"


# --- key-value buckets -------------------------------------------------------------------

WORKERS_BUCKET = "LLMQ_WORKERS"
"""key = worker id, value = `schemas.registry.WorkerInfo`; entries expire after ~3 heartbeats."""
INSTALL_BUCKET = "LLMQ_INSTALL"
"""File storage, never expires: facts about this installation that must outlive Valkey's data;
key `DATA_MARKER_KV`.<hash of Valkey's address> = the value of that Valkey's `DATA_MARKER_KEY`
(api/data_marker.py)."""
DATA_MARKER_KV = "valkey-marker"
MODELS_BUCKET = "LLMQ_MODELS"
"""key = escaped model name, value = `schemas.registry.ModelInfo`; never expires: the catalog
of models any worker has ever served, so a known model with no live worker is a 503, not a 404."""


def model_kv_key(model: str) -> str:
    """A model's key in LLMQ_MODELS: KV keys forbid `%`, so the escape marker becomes `=`."""
    return escape_model(model).replace("%", "=")


MICRO_SERVICE = "llmq-worker"
"""NATS micro service of every worker process (`nats micro ls|info|stats llmq-worker`)."""
API_MICRO_SERVICE = "llmq-api"
"""NATS micro service of every api process: how `llmq status` counts the api replicas."""

# --- async jobs and batches (docs/batch.md) ----------------------------------------------

OUTCOMES_STREAM = "LLMQ_OUTCOMES"
"""Async/batch reply frames and LLMQ_BATCH's max-deliveries advisories (file, work queue)."""
OUTCOME_PREFIX = "llmq.outcome"
BATCH_MAX_DELIVERIES = max_deliveries_advisory(BATCH_STREAM)
"""Published by the server when a batch job ran out of deliveries; captured by OUTCOMES."""
COLLECTOR_CONSUMER = "collector"
"""The one durable pull consumer on LLMQ_OUTCOMES, shared by every api replica."""
WEBHOOKS_STREAM = "LLMQ_WEBHOOKS"
"""Pending webhook deliveries (file, work queue); `llmq.webhook.<job id>`."""
WEBHOOK_PREFIX = "llmq.webhook"
WEBHOOK_CONSUMER = "webhooks"

RESULTS_BUCKET = "LLMQ_RESULTS"
"""key = `job.<id>` / `line.<batch>.<n>`, value = the first final frame (create-only)."""
ASYNC_JOBS_BUCKET = "LLMQ_ASYNC_JOBS"
"""key = `<tenant token>.<job id>`, value = the async job's record."""
BATCHES_BUCKET = "LLMQ_BATCHES"
"""key = `<tenant token>.<batch id>`, value = the batch's record (status, counts, lease)."""
FILE_META_BUCKET = "LLMQ_FILE_META"
"""key = `<tenant token>.<file id>`, value = the file's record; the bytes are in LLMQ_FILES."""
FILES_OBJECT_STORE = "LLMQ_FILES"
"""Object store; object name = `<tenant token>/<file id>`."""
RESPONSES_BUCKET = "LLMQ_RESPONSES"
"""key = `<tenant token>.<response id hex>`, value = the stored response (Responses API)."""
CONVERSATIONS_BUCKET = "LLMQ_CONVERSATIONS"
"""key = `<tenant token>.<conversation id hex>`, value = the conversation with its items."""


def tenant_token(tenant: str) -> str:
    """A tenant as one subject token / KV key part: `_` for the anonymous tenant (auth_mode
    none; real names start with a letter or digit), else escaped like `model_kv_key`."""
    return model_kv_key(tenant) if tenant else "_"


TENANT_SCOPE_SEPARATOR = "~"
"""Joins a tenant's name and its immutable id into the scope that keys its durable data
(files, jobs, batches); tenant names cannot contain it."""


def tenant_scope(tenant: str, tenant_id: str) -> str:
    """The namespace of a tenant's durable data: `<name>~<id>`. A tenant created before ids
    existed (`tenant_id` empty) keeps its name as the namespace, so its data stays
    reachable; a tenant created again under the same name gets a new id and starts empty."""
    return f"{tenant}{TENANT_SCOPE_SEPARATOR}{tenant_id}" if tenant_id else tenant


def tenant_of_scope(scope: str) -> str:
    """The tenant name of a scope (what quotas and usage are keyed by)."""
    return scope.split(TENANT_SCOPE_SEPARATOR, 1)[0]


def tenant_from_token(token: str) -> str:
    return "" if token == "_" else unescape_model(token.replace("=", "%"))


def outcome_subject(tenant: str, model: str, job_id: str) -> str:
    """`Llmq-Reply` of an async or batch job: captured by LLMQ_OUTCOMES."""
    return f"{OUTCOME_PREFIX}.{tenant_token(tenant)}.{escape_model(model)}.{job_id}"


# --- durable booking of interactive usage (docs/protocol.md) --------------------------------

USAGE_STREAM = "LLMQ_USAGE"
"""The final usage of every interactive job, published by its worker (file, work queue,
max age one day), so it is booked even when the api that submitted the job is gone."""
AUTH_CHANGED = "llmq.auth.changed"
"""Core NATS: a tenant changed by the admin API; every api drops its cached keys of it."""

USAGE_PREFIX = "llmq.usage"
USAGE_CONSUMER = "usage-booker"
"""The one durable pull consumer on LLMQ_USAGE, shared by every api replica."""


def usage_subject(tenant: str, model: str) -> str:
    """`llmq.usage.<tenant token>.<model>`: where a worker reports a job's final usage."""
    return f"{USAGE_PREFIX}.{tenant_token(tenant)}.{escape_model(model)}"


def webhook_subject(job_id: str) -> str:
    return f"{WEBHOOK_PREFIX}.{job_id}"


def job_results_key(job_id: str) -> str:
    return f"job.{job_id}"


def line_results_key(batch_hex: str, line: int | str = "*") -> str:
    """One line's result; `*`: every line result of the batch (a KV pattern)."""
    return f"line.{batch_hex}.{line}"


def kv_subject(bucket: str, key: str) -> str:
    """The stream subject a KV bucket keeps `key` (or a key pattern) under."""
    return f"$KV.{bucket}.{key}"


def tenant_keys_pattern(scope: str) -> str:
    """Every record of one tenant scope in a `<tenant token>.<id>` bucket."""
    return f"{tenant_token(scope)}.*"


# --- headers -----------------------------------------------------------------------------

H_JOB = "Llmq-Job"
H_TENANT = "Llmq-Tenant"
H_REPLY = "Llmq-Reply"
H_DEADLINE = "Llmq-Deadline"
H_KIND = "Llmq-Kind"
"""What the body is: `chat` (default), `completion`, `embedding`, `response` or `message`."""
H_FRAME = "Llmq-Frame"
H_SEQ = "Llmq-Seq"
H_WORKER = "Llmq-Worker"
H_REQUEUED = "Llmq-Requeued"  # on a `ping`: the job was given back (before a token), queued
H_ATTEMPT = "Llmq-Attempt"  # on each frame of a later delivery: its number (absent: the 1st)
H_CHUNKS = "Llmq-Chunks"
"""On a `chunk` frame holding several chunks: how many (absent: one). docs/protocol.md."""
H_MESSAGE_OP = "Llmq-Message-Op"
"""On a `message` job: `count_tokens` asks for the input token count, not a message."""
H_ANTHROPIC_VERSION = "Llmq-Anthropic-Version"
H_ANTHROPIC_BETA = "Llmq-Anthropic-Beta"
"""The client's `anthropic-version` / `anthropic-beta` headers on a `message` job, which an
Anthropic upstream gets (and nothing else of the client's headers)."""
H_LEASE = "Llmq-Lease"  # a leased job's booking ticket (docs/routing.md, "Leased budget")
H_MSG_ID = "Nats-Msg-Id"
H_TRACEPARENT = "traceparent"
H_STATUS = "Status"
"""nats-server's status header on its own replies: `503` no responders (no stream on a
published subject), `404`/`408`/`409` the end of a pull request."""
