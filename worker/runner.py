"""Running one job: from the JetStream message to the last reply frame.

The message is acked at the point of no return, the first chunk sent to the client; until
then a failure that may succeed elsewhere (an upstream 5xx, 429, a refused connection) is
nak'ed so JetStream hands the job to another worker, up to `max_deliver` attempts. A job
past its deadline or already cancelled is dropped unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from llmq.schemas.envelope import EnvelopeError, JobEnvelope, JobKind, decode_request
from llmq.schemas.frames import Done, failure
from llmq.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Usage
from llmq.worker.backends.base import Backend, BackendError, Call, Out, ReplyTo
from llmq.worker.delivery import delivered
from llmq.worker.endpoints import EndpointUpstream, run_endpoint
from llmq.worker.keepalive import KeepAlive
from llmq.worker.messages.jobs import MessageJobs
from llmq.worker.replies import FrameSender, drive
from llmq.worker.responses_api.adapter import Started, run_response
from llmq.worker.responses_api.passthrough import ResponsesPassthrough
from llmq.worker.tracing import TRACEPARENT, record_job, valid_traceparent
from llmq.worker.usage_report import report_final_usage
from llmq.worker.whole_replies import Fold, embedding_list

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    """What happened to one job, for metrics and the breaker; `job`: its stream and model."""

    job: JobEnvelope
    outcome: str  # ok | error | upstream_error | retried | cancelled | expired | dropped
    usage: Usage = field(default_factory=Usage)
    started: float = 0.0
    first_token: float | None = None
    ended: float = 0.0
    backend_failed: bool = False
    delivery: int = 1  # JetStream's delivery count: above 1, the backend may be called again

    @property
    def job_id(self) -> str:
        return self.job.id


def _untracked(_job: JobEnvelope) -> AbstractContextManager[None]:
    return nullcontext()


class CancelledJobs:
    """Job ids cancelled recently, so a job cancelled while still queued is dropped unseen."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, job_id: str) -> None:
        self._ids[job_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._ids


class _Ack:
    """Acks the message once, at the first chunk or at the end, whichever comes first."""

    __slots__ = ("done", "msg")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self.done = False

    async def ack(self) -> None:
        if not self.done:
            self.done = True
            with contextlib.suppress(Exception):
                await self.msg.ack()

    async def term(self) -> None:
        if not self.done:
            self.done = True
            with contextlib.suppress(Exception):
                await self.msg.term()

    async def in_progress(self) -> None:
        """Keep the unacked job ours (the keep-alive loop calls it; JetStream's ack wait)."""
        with contextlib.suppress(Exception):
            await self.msg.in_progress()

    async def nak(self, delay: float) -> None:
        if not self.done:
            self.done = True
            with contextlib.suppress(Exception):
                await self.msg.nak(delay=delay)


class JobRunner:
    def __init__(
        self,
        nc: Client,
        backend: Backend,
        worker_id: str,
        upstream_names: dict[str, str],
        ping_interval: float,
        *,
        max_deliver: int,
        on_outcome: Callable[[JobOutcome], None] = lambda _o: None,
        track: Callable[[JobEnvelope], AbstractContextManager[None]] = _untracked,
    ) -> None:
        self.nc = nc
        self.backend = backend
        self.worker_id = worker_id
        self.upstream_names = upstream_names
        self.ping_interval = ping_interval
        self.keepalive = KeepAlive(ping_interval)  # pings every job silent for a ping interval
        self.max_deliver = max_deliver
        self.on_outcome = on_outcome
        self.track = track  # around each job's run (the worker's running-job book)
        self.cancelled = CancelledJobs()
        self.shutting_down = False  # a drain ran out of time: cancelled jobs go back, not dropped
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.acks: dict[str, _Ack] = {}  # each running job's message, which a redelivery joins
        self.responses_upstream: ResponsesPassthrough | None = None  # serves /v1/responses itself
        self.endpoints: EndpointUpstream | None = (
            None  # OpenAI's other endpoints (worker/endpoints)
        )
        self.messages: MessageJobs | None = None  # Anthropic Messages jobs (worker/messages)

    def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def run(self, msg: Msg) -> None:
        ack = _Ack(msg)
        try:
            job = JobEnvelope.from_msg(msg)
        except EnvelopeError as exc:
            await self._refuse(ack, exc)
            return
        if not job.id or not job.reply:
            await ack.term()
            return
        running = self.acks.get(job.id)
        if running is not None and not running.done:
            # JetStream redelivered a job this worker still runs (it stalled past the ack wait):
            # the running attempt takes over the newest delivery, keeps it in progress and acks
            # or hands it back when it ends, so the job runs once and is never lost.
            running.msg = msg
            await running.in_progress()
            return
        with self.track(job):
            if (job.deadline_ms and time.time() * 1000 >= job.deadline_ms) or (
                job.id in self.cancelled
            ):
                await ack.term()
                self.on_outcome(JobOutcome(job, "expired"))
                return
            task = asyncio.current_task()
            assert task is not None
            self.tasks[job.id], self.acks[job.id] = task, ack
            trace = TRACEPARENT.set(valid_traceparent(job.traceparent))
            try:
                await self._attempt(msg, ack, job)
            finally:
                TRACEPARENT.reset(trace)
                if self.tasks.get(job.id) is task:  # a retry elsewhere may have started here
                    del self.tasks[job.id], self.acks[job.id]

    async def _refuse(self, ack: _Ack, error: EnvelopeError) -> None:
        """A job this worker cannot read (a kind it does not know): fail it, do not retry."""
        await ack.term()
        if error.reply:
            sender = FrameSender(self.nc, error.reply, self.worker_id)
            failed = failure(400, str(error), "invalid_request_error", "unsupported_kind")
            await sender.failed(failed)

    async def _attempt(self, msg: Msg, ack: _Ack, job: JobEnvelope) -> None:
        attempt = delivered(msg)
        sender = FrameSender(self.nc, job.reply, self.worker_id, job.deadline_ms)
        outcome = JobOutcome(job, "ok", started=time.monotonic(), delivery=attempt)
        await sender.accepted(attempt)
        self.keepalive.add(sender, ack)
        try:
            # The deadline is for starting (checked in `run`); once started, the backend's own
            # timeouts and the api's cancel bound the job.
            await self._execute(msg.data, job.kind, sender, ack, outcome)
        except asyncio.CancelledError:
            if self.shutting_down and job.id not in self.cancelled:
                await self._hand_back(ack, sender, attempt, outcome)
            else:
                outcome.outcome = "cancelled"
                await ack.term()
            raise
        except BackendError as exc:
            outcome.backend_failed = exc.status >= 500 or exc.status == 429
            if (
                exc.retryable
                and outcome.first_token is None
                and not ack.done
                and attempt < self.max_deliver
            ):
                outcome.outcome = "retried"
                await ack.nak(delay=min(0.1 * attempt, 1.0))
                await sender.requeued(attempt)
                return
            outcome.outcome = "upstream_error"
            failed = failure(exc.status, exc.message, exc.type, exc.code, exc.param)
            failed.retry_after = exc.retry_after
            await sender.failed(failed)
        except msgspec.ValidationError as exc:
            outcome.outcome = "error"
            await sender.failed(failure(400, str(exc), "invalid_request_error", "invalid_body"))
        except Exception:
            log.exception("job %s failed", job.id)
            outcome.outcome = "error"
            await sender.failed(failure(500, "the worker failed", "server_error", "worker_error"))
        finally:
            self.keepalive.remove(sender)
            await ack.ack()
            outcome.ended = time.monotonic()
            # durable booking when the api is gone (usage_report.py)
            await report_final_usage(self.nc, job, outcome.outcome, outcome.usage)
            self.on_outcome(outcome)
            record_job(outcome, msg)  # OpenTelemetry spans; returns at once when off

    async def _hand_back(
        self, ack: _Ack, sender: FrameSender, attempt: int, outcome: JobOutcome
    ) -> None:
        """The worker stops mid-job: give it back if nobody saw a token, else end it clearly."""
        if not ack.done:
            outcome.outcome = "retried"
            await ack.nak(delay=0)
            await sender.requeued(attempt)
            return
        outcome.outcome = "error"
        message = "the worker shut down mid-stream"
        await sender.failed(failure(503, message, "service_unavailable", "worker_shutdown"))

    async def _execute(
        self, body: bytes, kind: JobKind, sender: FrameSender, ack: _Ack, outcome: JobOutcome
    ) -> None:
        if kind == "response":  # the Responses API: worker/responses_api
            await self._respond(body, sender, ack, outcome)
            return
        if kind == "endpoint":  # OpenAI's other endpoints: worker/endpoints (acked at its head)
            args = (self.endpoints, self.upstream_names, body, sender, self._started(ack, outcome))
            outcome.usage = await run_endpoint(*args, whole=outcome.job.batch)
            return
        if kind == "message" and self.messages is not None:  # Anthropic's: worker/messages
            started = self._started(ack, outcome)
            outcome.usage = await self.messages.run(body, outcome.job, sender, started)
            return
        request = decode_request(kind, body)
        if isinstance(request, EmbeddingRequest):
            await self._embed(request, sender, outcome)
            return
        upstream = self.upstream_names.get(request.model, request.model)
        text = isinstance(request, CompletionRequest)
        reply = ReplyTo(
            _job_completion_id("cmpl" if text else "chatcmpl", outcome.job_id),
            request.model,
            int(time.time()),
            _wants_usage(request),  # a folded reply takes its usage from the last Out
            whole=not request.stream,
        )
        call = Call(request, upstream, body, reply)
        outs = self.backend.complete(call) if text else self.backend.chat(call)
        if request.stream:
            await self._stream(outs, sender, ack, outcome)
        else:
            await self._collect(outs, reply, text, sender, outcome)

    @staticmethod
    def _started(ack: _Ack, outcome: JobOutcome) -> Started:
        """The first output of a Responses or Messages job: a stream's point of no return."""

        async def started(streams: bool) -> None:
            outcome.first_token = time.monotonic()
            if streams:
                await ack.ack()

        return started

    async def _respond(
        self, body: bytes, sender: FrameSender, ack: _Ack, outcome: JobOutcome
    ) -> None:
        started = self._started(ack, outcome)
        if self.responses_upstream is not None:
            outcome.usage = await self.responses_upstream.run(
                self.upstream_names, body, outcome.job_id, sender, started
            )
            return
        outcome.usage = await run_response(
            self.backend, self.upstream_names, body, outcome.job_id, sender, started=started
        )

    async def _stream(
        self, outs: AsyncIterator[Out], sender: FrameSender, ack: _Ack, outcome: JobOutcome
    ) -> None:
        finish: str | None = None
        usage: Usage | None = None
        held: list[bytes] = []  # chunks before the first token (a role chunk): still retryable
        ready: list[bytes] = []  # chunks the backend gave without waiting: one frame

        async def take(out: Out) -> None:
            nonlocal usage, finish
            if out.tokens and outcome.first_token is None:
                outcome.first_token = time.monotonic()
                await ack.ack()  # the point of no return: the client sees a token
                ready.extend(held)
                held.clear()
            if out.chunk:
                (ready if outcome.first_token is not None else held).append(out.chunk)
            if out.usage is not None:
                usage, finish = out.usage, out.finish_reason

        async def flush() -> None:
            if ready:
                batch = ready.copy()
                ready.clear()
                await sender.chunks(batch)

        await drive(outs, take, flush)  # flushes whenever the backend is about to wait
        if held:
            await sender.chunks(held)
        usage = usage or Usage()
        outcome.usage = usage
        await sender.done(Done(usage=usage, finish_reason=finish))

    async def _collect(
        self,
        outs: AsyncIterator[Out],
        reply: ReplyTo,
        text: bool,
        sender: FrameSender,
        outcome: JobOutcome,
    ) -> None:
        """A non-streamed reply: the backend's body (`Out.body`), else folded from its chunks."""
        finish: str | None = None
        usage: Usage | None = None
        body = b""
        fold: Fold | None = None
        async for out in outs:
            if out.tokens and outcome.first_token is None:
                outcome.first_token = time.monotonic()
            if out.chunk:
                if fold is None:
                    fold = Fold(reply, text)
                fold.add(out.chunk)
            if out.usage is not None:
                usage, finish, body = out.usage, out.finish_reason, out.body
        usage = usage or Usage()
        outcome.usage = usage
        if not body:
            body = (fold or Fold(reply, text)).whole(usage)
        await sender.done(Done(usage=usage, finish_reason=finish, body=msgspec.Raw(body)))

    async def _embed(
        self, request: EmbeddingRequest, sender: FrameSender, outcome: JobOutcome
    ) -> None:
        upstream = self.upstream_names.get(request.model, request.model)
        result = await self.backend.embed(request, upstream)
        outcome.usage = result.usage
        payload = embedding_list(result, request.model, request.encoding_format == "base64")
        await sender.done(Done(usage=result.usage, finish_reason="stop", body=msgspec.Raw(payload)))


def _wants_usage(request: ChatCompletionRequest | CompletionRequest) -> bool:
    options = request.stream_options
    return bool(options and not isinstance(options, msgspec.UnsetType) and options.include_usage)


def _job_completion_id(prefix: str, job_id: str) -> str:
    return f"{prefix}-{job_id}"
