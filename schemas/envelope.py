"""The job envelope: everything about a job except its body, typed once.

The api writes it into the NATS headers of the job message (`to_headers`); the worker, its
metrics and the operator commands read it back (`from_msg`). The subject carries the model
and the stream, the headers the rest (docs/protocol.md, "A job"). Header names
never change on the wire, and a header an older api did not send decodes to its default, so
api and workers can be upgraded one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, get_args

import msgspec
from msgspec import Struct

from llmq.schemas import names
from llmq.schemas.messages import message_request_decoder
from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    chat_request_decoder,
    completion_request_decoder,
    embedding_request_decoder,
)
from llmq.schemas.responses import response_request_decoder

JobKind = Literal["chat", "completion", "embedding", "response", "message", "endpoint"]
"""What the body is: an OpenAI chat, completion, embedding or Responses request, an
Anthropic Messages request (`message`, docs/anthropic.md), or a request to one of OpenAI's
other endpoints (`endpoint`, `schemas.endpoints`)."""
JOB_KINDS: Final[tuple[JobKind, ...]] = get_args(JobKind)
DEFAULT_KIND: Final[JobKind] = "chat"
"""The kind of a job without an `Llmq-Kind` header (the header is left out for it)."""

AnyRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest

REQUEST_DECODERS: Final[Mapping[JobKind, msgspec.json.Decoder[Any]]] = MappingProxyType(
    {
        "chat": chat_request_decoder,
        "completion": completion_request_decoder,
        "embedding": embedding_request_decoder,
        "response": response_request_decoder,
        "message": message_request_decoder,
    }
)
"""One reused decoder of the OpenAI request type per job kind."""


class EnvelopeError(ValueError):
    """The headers name a job kind this version does not know; `reply` is where the job's
    frames would go (empty if unknown), so the reader can still fail it clearly."""

    def __init__(self, message: str, reply: str = "") -> None:
        super().__init__(message)
        self.reply = reply


def job_kind(value: str) -> JobKind:
    """`value` as a JobKind; EnvelopeError when it is none of them."""
    for kind in JOB_KINDS:
        if kind == value:
            return kind
    raise EnvelopeError(f"unknown job kind `{value}`")


def decode_request(kind: JobKind, body: bytes) -> AnyRequest:
    """The job's body as the OpenAI request of its kind (msgspec.ValidationError if not).
    A `response`, `message` or `endpoint` job is not one of these: its worker reads it as
    JSON or bytes (`worker/responses_api`, `worker/messages`, `worker/endpoints`), and asking
    for it here is a ValidationError."""
    if kind in ("response", "message", "endpoint"):
        raise msgspec.ValidationError(f"a {kind} job is not a chat-shaped request")
    request: AnyRequest = REQUEST_DECODERS[kind].decode(body)
    return request


class Message(Protocol):
    """What `from_msg` reads: a core NATS message or a JetStream stored message."""

    @property
    def subject(self) -> str | None: ...

    @property
    def headers(self) -> dict[str, str] | None: ...


class JobEnvelope(Struct, frozen=True, kw_only=True):
    """One job's metadata. The model and the stream travel in the subject, not the headers."""

    id: str
    """`Llmq-Job`; also the OpenAI id suffix and, by default, `Nats-Msg-Id`."""
    model: str
    tenant: str = ""
    """`Llmq-Tenant`; empty for the anonymous tenant."""
    kind: JobKind = DEFAULT_KIND
    """`Llmq-Kind`, left out for chat."""
    reply: str = ""
    """`Llmq-Reply`: where the worker sends the reply frames."""
    deadline_ms: int = 0
    """`Llmq-Deadline`, unix ms: a worker drops the job past it; 0 = none."""
    batch: bool = False
    """On LLMQ_BATCH (async and batch jobs) rather than LLMQ_JOBS."""
    traceparent: str | None = None
    """W3C trace context, copied from the client's request when present."""
    msg_id: str = ""
    """`Nats-Msg-Id` when it is not the job id (a batch line published again)."""
    message_op: str = ""
    """`Llmq-Message-Op` of a `message` job: empty to create a message, `count_tokens` to
    count its input tokens."""
    anthropic_version: str = ""
    """`Llmq-Anthropic-Version`: the client's `anthropic-version`, for an Anthropic upstream."""
    anthropic_beta: str = ""
    """`Llmq-Anthropic-Beta`: the client's `anthropic-beta`, for an Anthropic upstream."""
    lease: str = ""
    """`Llmq-Lease`: admitted from the api's leased budget; the worker echoes it in the
    job's usage report (`FinalUsage.lease`)."""

    @property
    def stream(self) -> str:
        return names.BATCH_STREAM if self.batch else names.JOBS_STREAM

    @property
    def subject(self) -> str:
        return names.batch_subject(self.model) if self.batch else names.jobs_subject(self.model)

    @property
    def deadline(self) -> float:
        """Unix seconds; 0.0 = none."""
        return self.deadline_ms / 1000

    def to_headers(self) -> dict[str, str]:
        headers = {
            names.H_JOB: self.id,
            names.H_TENANT: self.tenant,
            names.H_REPLY: self.reply,
            names.H_DEADLINE: str(self.deadline_ms),
            names.H_MSG_ID: self.msg_id or self.id,
        }
        if self.kind != DEFAULT_KIND:
            headers[names.H_KIND] = self.kind
        if self.traceparent:
            headers[names.H_TRACEPARENT] = self.traceparent
        for name, value in (
            (names.H_MESSAGE_OP, self.message_op),
            (names.H_ANTHROPIC_VERSION, self.anthropic_version),
            (names.H_ANTHROPIC_BETA, self.anthropic_beta),
            (names.H_LEASE, self.lease),
        ):
            if value:
                headers[name] = value
        return headers

    @classmethod
    def from_headers(cls, subject: str, headers: Mapping[str, str] | None) -> JobEnvelope:
        """Read a job's envelope; a missing or malformed header is its default, an unknown
        kind raises EnvelopeError."""
        headers = headers or {}
        batch, model = source_of(subject)
        job_id = headers.get(names.H_JOB, "")
        msg_id = headers.get(names.H_MSG_ID, "")
        reply = headers.get(names.H_REPLY, "")
        try:
            kind = job_kind(headers.get(names.H_KIND) or DEFAULT_KIND)
        except EnvelopeError as exc:
            raise EnvelopeError(str(exc), reply) from None
        return cls(
            id=job_id,
            model=model,
            tenant=headers.get(names.H_TENANT, ""),
            kind=kind,
            reply=reply,
            deadline_ms=_int(headers.get(names.H_DEADLINE)),
            batch=batch,
            traceparent=headers.get(names.H_TRACEPARENT) or None,
            msg_id="" if msg_id == job_id else msg_id,
            message_op=headers.get(names.H_MESSAGE_OP, ""),
            anthropic_version=headers.get(names.H_ANTHROPIC_VERSION, ""),
            anthropic_beta=headers.get(names.H_ANTHROPIC_BETA, ""),
            lease=headers.get(names.H_LEASE, ""),
        )

    @classmethod
    def from_msg(cls, msg: Message) -> JobEnvelope:
        return cls.from_headers(msg.subject or "", msg.headers)


def source_of(subject: str) -> tuple[bool, str]:
    """`llmq.batch.<escaped model>` -> (True, model); `llmq.jobs.…` -> (False, model).
    A token that is not a valid escape is taken as it is."""
    prefix, _, token = subject.rpartition(".")
    try:
        model = names.unescape_model(token)
    except (ValueError, UnicodeDecodeError):
        model = token
    return prefix == names.BATCH_PREFIX, model


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
