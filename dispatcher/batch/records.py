"""What async jobs, batches and files store in JetStream, and how they look to OpenAI clients.

Records are msgspec structs encoded as JSON into KV buckets. A job's or line's result is the
first final frame its worker sent (`schemas.frames.Done` / `Failed`) or, for a request that
never ran (invalid line, expired, cancelled, lost), an `Unrun` frame written by llmq itself.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec
from msgspec import Struct

from llmq.schemas.envelope import DEFAULT_KIND, JobKind
from llmq.schemas.frames import Done, Failed
from llmq.schemas.openai import Usage

JOB_ID_PREFIX: Final = "job_"
BATCH_ID_PREFIX: Final = "batch_"
FILE_ID_PREFIX: Final = "file-"
BATCH_REQUEST_PREFIX: Final = "batch_req_"


def time_hex() -> str:
    """32 hex chars, time-ordered: 12 for unix ms, 20 random. Ids sort by creation time."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def is_hex_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def strip_prefix(public_id: str, prefix: str) -> str | None:
    """The hex part of a public id (`job_<hex>`), or None when it is not one of ours."""
    if not public_id.startswith(prefix):
        return None
    hex_part = public_id[len(prefix) :]
    return hex_part if is_hex_id(hex_part) else None


def line_job_id(batch_hex: str, line: int) -> str:
    """The job id of one batch line: `<batch hex>-<line number>`."""
    return f"{batch_hex}-{line}"


def split_line_job_id(job_id: str) -> tuple[str, int] | None:
    batch_hex, sep, line = job_id.rpartition("-")
    if not sep or not line.isdigit() or not is_hex_id(batch_hex):
        return None
    return batch_hex, int(line)


# --- results -----------------------------------------------------------------------------


class Unrun(Struct, tag="unrun", tag_field="frame", omit_defaults=True):
    """A request that got no answer from a worker: an invalid batch line, or a job that
    expired, was cancelled or was lost before it ran. In a batch's error file it is a line
    with `response: null` and this `error`."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None


Result = Done | Failed | Unrun
result_decoder: Final = msgspec.json.Decoder(Result)
encoder: Final = msgspec.json.Encoder()


def unrun(code: str, message: str, line: int | None = None, param: str | None = None) -> bytes:
    return encoder.encode(Unrun(code=code, message=message, line=line, param=param))


# --- async jobs --------------------------------------------------------------------------

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled", "expired"]
FINAL_JOB: Final = frozenset({"completed", "failed", "cancelled", "expired"})


class JobRecord(Struct, kw_only=True, omit_defaults=True):
    id: str
    """32 hex; the `Llmq-Job` header. Public id `job_<id>`."""
    tenant: str
    model: str
    kind: JobKind = DEFAULT_KIND
    status: JobStatus = "queued"
    created_at: float
    expires_at: float
    started_at: float | None = None
    ended_at: float | None = None
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    webhook: Literal["pending", "delivered", "failed"] | None = None
    webhook_attempts: int = 0
    attempts: int = 0
    worker: str | None = None
    usage: Usage | None = None
    status_code: int | None = None
    error: dict[str, Any] | None = None


job_decoder: Final = msgspec.json.Decoder(JobRecord)

ENDPOINT_OF_KIND: Final[Mapping[JobKind, str]] = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
    "response": "/v1/responses",
}
KIND_OF_ENDPOINT: Final = {v: k for k, v in ENDPOINT_OF_KIND.items()}
BATCH_ENDPOINTS: Final[Mapping[str, JobKind]] = {**KIND_OF_ENDPOINT, "/v1/moderations": "endpoint"}
"""What a batch may run: the job kinds above, and moderations as `endpoint` jobs (each line's
body packed with its path, `schemas.endpoints`)."""


_UNRUN_STATUS: Final[dict[str, JobStatus]] = {
    "job_cancelled": "cancelled",
    "job_expired": "expired",
}


def settle_job(record: JobRecord, result: Result, now: float) -> JobRecord:
    """The record once `result` is known (status, end time, usage or error)."""
    record = msgspec.structs.replace(record, ended_at=record.ended_at or now)
    if isinstance(result, Done):
        record.status, record.usage, record.status_code = "completed", result.usage, 200
    elif isinstance(result, Failed):
        record.status, record.status_code = "failed", result.status
        record.error = msgspec.to_builtins(result.error)
    else:
        record.status = _UNRUN_STATUS.get(result.code, "failed")
        record.error = {"message": result.message, "type": "invalid_request_error"}
        record.error["code"] = result.code
    return record


def job_view(record: JobRecord, result: Result | None) -> dict[str, Any]:
    """GET /v1/jobs/{id} and the webhook body."""
    view: dict[str, Any] = {
        "id": JOB_ID_PREFIX + record.id,
        "object": "job",
        "status": record.status,
        "model": record.model,
        "endpoint": ENDPOINT_OF_KIND.get(record.kind, record.kind),
        "created_at": int(record.created_at),
        "started_at": _int(record.started_at),
        "completed_at": _int(record.ended_at) if record.status == "completed" else None,
        "failed_at": _int(record.ended_at) if record.status == "failed" else None,
        "cancelled_at": _int(record.ended_at) if record.status == "cancelled" else None,
        "expired_at": _int(record.ended_at) if record.status == "expired" else None,
        "expires_at": int(record.expires_at),
        "metadata": record.metadata,
        "webhook_url": record.webhook_url,
        "webhook_status": record.webhook,
        "usage": msgspec.to_builtins(record.usage) if record.usage else None,
        "status_code": record.status_code,
        "result": None,
        "error": record.error,
    }
    if isinstance(result, Done) and result.body:
        view["result"] = msgspec.json.decode(result.body)
    return view


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


# --- batches -----------------------------------------------------------------------------

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
FINAL_BATCH: Final = frozenset({"failed", "completed", "expired", "cancelled"})


class RequestCounts(Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(Struct, omit_defaults=True):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchUsage(Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class BatchRecord(Struct, kw_only=True, omit_defaults=True):
    id: str
    """32 hex. Public id `batch_<id>`."""
    tenant: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus = "validating"
    created_at: int
    expires_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[BatchError] | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    usage: BatchUsage | None = None
    owner: str = ""
    """The api replica running the batch ('' = nobody)."""
    lease_until: float = 0.0
    dispatched: int = 0
    """How many of the batch's valid lines, in file order, have been queued."""
    key_id: str = ""
    """The API key that created the batch: its own limits apply to every line."""


batch_decoder: Final = msgspec.json.Decoder(BatchRecord)


def batch_view(record: BatchRecord) -> dict[str, Any]:
    """The OpenAI `batch` object; a field not set yet is omitted rather than null (the spec
    types each as a string, integer or object)."""
    usage = record.usage
    view = {
        "id": BATCH_ID_PREFIX + record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": (
            {"object": "list", "data": [msgspec.to_builtins(e) for e in record.errors]}
            if record.errors
            else None
        ),
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "created_at": record.created_at,
        "in_progress_at": record.in_progress_at,
        "expires_at": record.expires_at,
        "finalizing_at": record.finalizing_at,
        "completed_at": record.completed_at,
        "failed_at": record.failed_at,
        "expired_at": record.expired_at,
        "cancelling_at": record.cancelling_at,
        "cancelled_at": record.cancelled_at,
        "request_counts": msgspec.to_builtins(record.request_counts),
        "metadata": record.metadata,
        "model": record.model,
        "usage": (
            {
                "input_tokens": usage.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.total_tokens,
            }
            if usage
            else None
        ),
    }
    return {key: value for key, value in view.items() if value is not None}


# --- files -------------------------------------------------------------------------------


class FileRecord(Struct, kw_only=True, omit_defaults=True):
    id: str
    tenant: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None


file_decoder: Final = msgspec.json.Decoder(FileRecord)


def file_view(record: FileRecord) -> dict[str, Any]:
    """OpenAI's file object; `expires_at` only for a file that expires (the spec types it
    an integer, so it is omitted rather than null)."""
    view: dict[str, Any] = {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
    }
    if record.expires_at is not None:
        view["expires_at"] = record.expires_at
    return view
