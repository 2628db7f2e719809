"""Publishing a job to JetStream through a cluster's leader elections and node losses.

While a stream elects a new leader (its node died) or the client moves to another node,
a publish times out, finds no responder or gets a 503 from JetStream. The job's headers
carry `Nats-Msg-Id` (= job id), so publishing again is safe: the stream keeps one copy
whatever number of attempts reached it. So such failures are retried, with a short
growing pause, until `until` (the job's first-token deadline, or a shorter bound the
caller sets); only then does the caller see the last error and answer 503.

The worker uses the same retried publish for the final frame of an async or batch job
(`worker/replies.py`), with `Nats-Msg-Id` = `<job id>:<attempt>:final`.

The api's interactive jobs use `publish_to_inbox`: the same publish with the ack sent to the
api's own reply inbox instead of through nats-py's request machinery (cheaper per job,
docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from llmq.schemas import names

log = logging.getLogger(__name__)

FIRST_PAUSE = 0.05
MAX_PAUSE = 0.5
NO_RESPONDERS = "503"
"""The status header nats-server sends back when no stream listens on the subject."""
DURABLE_RETRY = 30.0
"""Seconds an async or batch job's publish is retried: its deadline is hours away, and a
caller waits (the HTTP client of POST /v1/jobs, or a batch that queues the line again)."""


STORE_FULL = 10077
"""JetStream's error code when a stream at its byte bound refuses a message (discard new)."""


def store_full(exc: BaseException) -> bool:
    """The stream is at its bound (`LLMQ_*_MAX_BYTES`): trying again does not help."""
    return isinstance(exc, APIError) and exc.err_code == STORE_FULL


def transient(exc: BaseException) -> bool:
    """A failure that a leader election or a reconnect explains, and that passes."""
    if store_full(exc):
        return False
    if isinstance(exc, ServiceUnavailableError):
        return True
    if isinstance(exc, APIError):  # e.g. "JetStream system temporarily unavailable"
        return exc.code == 503
    return isinstance(
        exc,
        TimeoutError
        | NatsTimeoutError
        | NoRespondersError
        | NoStreamResponseError
        | OutboundBufferLimitError,
    )


T = TypeVar("T")


async def retried(
    attempt: Callable[[float], Awaitable[T]], subject: str, timeout: float, until: float
) -> T:
    """`attempt(wait)`, retried on transient failures until the wall-clock time `until`
    (unix s); each attempt may wait at most `timeout` and never past `until`."""
    pause = FIRST_PAUSE
    attempts = 0
    while True:
        attempts += 1
        left = until - time.time()
        try:
            return await attempt(max(0.05, min(timeout, left)))
        except ConnectionClosedError:
            raise  # the process is shutting down: nothing to wait for
        except Exception as exc:
            left = until - time.time()
            if not transient(exc) or left <= pause:
                raise
            if attempts == 1:
                log.info("publish of a job on %s failed (%s); retrying", subject, exc)
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE)


async def publish_job(
    js: JetStreamContext,
    subject: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    *,
    until: float,
) -> PubAck:
    """Publish, retrying transient failures until the wall-clock time `until` (unix s).
    Each attempt waits at most `timeout` and never past `until`. `headers` must carry
    `Nats-Msg-Id`: it is what makes a retry land once."""
    assert "Nats-Msg-Id" in headers, "a retried publish needs Nats-Msg-Id"

    def attempt(wait: float) -> Awaitable[PubAck]:
        return js.publish(subject, body, timeout=wait, headers=headers)

    return await retried(attempt, subject, timeout, until)


class AckBox(Protocol):
    """Where the replies to a publish land (the job's `inbox.Mailbox`)."""

    async def ack(self, timeout: float) -> Msg | None: ...


class _Ack(msgspec.Struct):
    """JetStream's answer to a publish: a `PubAck`, or an API error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool | None = None
    domain: str | None = None
    error: dict[str, Any] | None = None


_ack_decoder = msgspec.json.Decoder(_Ack)


def pub_ack(msg: Msg) -> PubAck:
    """A publish's reply read as `js.publish` reads it: no responders (no stream) raises
    NoStreamResponseError, an API error its APIError, else the ack."""
    if msg.headers and msg.headers.get(names.H_STATUS) == NO_RESPONDERS:
        raise NoStreamResponseError
    ack = _ack_decoder.decode(msg.data)
    if ack.error is not None:
        raise APIError.from_error(ack.error)
    return PubAck(stream=ack.stream, seq=ack.seq, domain=ack.domain, duplicate=ack.duplicate)


async def publish_to_inbox(
    nc: Client,
    subject: str,
    body: bytes,
    headers: dict[str, str],
    reply: str,
    *,
    box: AckBox,
    timeout: float,
    until: float,
) -> PubAck:
    """`publish_job` with JetStream's ack sent to `reply`, a subject the caller already
    listens on (the api's reply inbox, which hands it to the job's mailbox `box`): no
    request token, response future or `wait_for` of nats-py's request per job. Same
    retries, same errors, same `Nats-Msg-Id` rule; an ack of an earlier attempt that comes
    late is as good as the last one's (one message id, one stored job)."""
    assert "Nats-Msg-Id" in headers, "a retried publish needs Nats-Msg-Id"

    async def attempt(wait: float) -> PubAck:
        await nc.publish(subject, body, reply=reply, headers=headers)
        msg = await box.ack(wait)
        if msg is None:
            raise NatsTimeoutError
        return pub_ack(msg)

    return await retried(attempt, subject, timeout, until)
