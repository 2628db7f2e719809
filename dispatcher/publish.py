"""Publishing a job to JetStream through a cluster's leader elections and node losses.

While a stream elects a new leader (its node died) or the client moves to another node,
a publish times out, finds no responder or gets a 503 from JetStream. The job's headers
carry `Nats-Msg-Id` (= job id), so publishing again is safe: the stream keeps one copy
whatever number of attempts reached it. So such failures are retried, with a short
growing pause, until `until` (the job's first-token deadline, or a shorter bound the
caller sets); only then does the caller see the last error and answer 503.

The worker uses the same retried publish for the final frame of an async or batch job
(`worker/replies.py`), with `Nats-Msg-Id` = `<job id>:<attempt>:final`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

log = logging.getLogger(__name__)

FIRST_PAUSE = 0.05
MAX_PAUSE = 0.5
DURABLE_RETRY = 30.0
"""Seconds an async or batch job's publish is retried: its deadline is hours away, and a
caller waits (the HTTP client of POST /v1/jobs, or a batch that queues the line again)."""


def transient(exc: BaseException) -> bool:
    """A failure that a leader election or a reconnect explains, and that passes."""
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


async def publish_job(
    js: JetStreamContext,
    subject: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    until: float,
) -> PubAck:
    """Publish, retrying transient failures until the wall-clock time `until` (unix s).
    Each attempt waits at most `timeout` and never past `until`. `headers` must carry
    `Nats-Msg-Id`: it is what makes a retry land once."""
    assert "Nats-Msg-Id" in headers, "a retried publish needs Nats-Msg-Id"
    pause = FIRST_PAUSE
    attempt = 0
    while True:
        attempt += 1
        left = until - time.time()
        try:
            return await js.publish(
                subject, body, timeout=max(0.05, min(timeout, left)), headers=headers
            )
        except ConnectionClosedError:
            raise  # the process is shutting down: nothing to wait for
        except Exception as exc:
            left = until - time.time()
            if not transient(exc) or left <= pause:
                raise
            if attempt == 1:
                log.info("publish of a job on %s failed (%s); retrying", subject, exc)
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE)
