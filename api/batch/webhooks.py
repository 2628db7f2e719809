"""Webhooks: POSTed once a job ends, retried with backoff, signed with HMAC-SHA256.

A delivery is a message on `llmq.webhook.<job id>` in the file-storage work queue
LLMQ_WEBHOOKS (`Nats-Msg-Id` = the job id, so settling a job twice queues one delivery).
Every api replica pulls from the shared durable consumer; a failed POST is nak'ed with the
next backoff delay, so retries survive api restarts. The body is the job object as
`GET /v1/jobs/{id}` returns it.

Every URL goes through the egress policy (`dispatcher.egress`) again at delivery time (DNS
may have changed since the job was submitted) and the POST goes to the address that was
checked. Whatever goes wrong, a delivery ends within `attempts` tries: a URL the policy
refuses, or one that cannot be parsed, fails at once (`term`); any other error is retried
with backoff and then given up. The tenant sees `delivered` or `failed`, never why.

Headers: `Llmq-Webhook-Id` (the job id: deliveries are at least once, deduplicate on it),
`Llmq-Webhook-Attempt`, and, when `webhook_secret` is set, `Llmq-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>` (see `verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from llmq.api.batch.egress import EgressPolicy, EgressRefused, Target
from llmq.dispatcher.batch.consume import pull_forever
from llmq.dispatcher.tasks import stop_task
from llmq.schemas import names

log = logging.getLogger(__name__)

MAX_DELIVERIES_AT_ONCE = 32
"""Webhook POSTs in flight per api process."""

SIGNATURE_HEADER = "Llmq-Signature"
ID_HEADER = "Llmq-Webhook-Id"
ATTEMPT_HEADER = "Llmq-Webhook-Attempt"
BACKOFF = (1.0, 2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Seconds before attempt n+1 (the last value repeats)."""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """What a receiver runs: the signature matches and is at most `tolerance` seconds old."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class _Task(msgspec.Struct):
    tenant: str
    job: str


Render = Callable[[str, str], Awaitable[tuple[str, bytes] | None]]
"""(tenant, job id) -> (url, body), or None when there is nothing to send any more."""
Record = Callable[[str, str, bool, int], Awaitable[None]]
"""(tenant, job id, delivered, attempts) once a webhook is delivered or given up."""


class Webhooks:
    def __init__(
        self,
        js: JetStreamContext,
        render: Render,
        record: Record,
        *,
        secret: str,
        attempts: int,
        timeout: float,
        backoff: tuple[float, ...] = BACKOFF,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.js = js
        self.render = render
        self.record = record
        self.secret = secret
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self.egress = egress or EgressPolicy()
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._warned = False

    async def enqueue(self, tenant: str, job_id: str) -> None:
        if not self.secret and not self._warned:
            self._warned = True
            log.warning("webhook_secret is empty: webhooks are sent unsigned")
        await self.js.publish(
            names.webhook_subject(job_id),
            msgspec.json.encode(_Task(tenant, job_id)),
            headers={names.H_MSG_ID: f"webhook-{job_id}"},
        )

    def start(self) -> None:
        # No proxies from the environment: the connection must go to the checked address.
        self._client = httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, trust_env=False
        )
        self._task = asyncio.create_task(self._loop(), name="webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
        for task in list(self._running):
            await stop_task(task)
        if self._client is not None:
            await self._client.aclose()

    async def _loop(self) -> None:
        await pull_forever(
            self.js,
            names.WEBHOOKS_STREAM,
            names.WEBHOOK_CONSUMER,
            lambda: MAX_DELIVERIES_AT_ONCE - len(self._running),
            self._start_all,
            name="webhooks",
        )

    async def _start_all(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            task = asyncio.create_task(self._deliver(msg))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _deliver(self, msg: Msg) -> None:
        """Deliver one webhook; never raises, and always acks, naks or terms the message."""
        try:
            task = msgspec.json.decode(msg.data, type=_Task)
        except msgspec.DecodeError:
            await _settle(msg.term())
            return
        attempt = msg.metadata.num_delivered or 1
        try:
            await self._attempt(msg, task, attempt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an outage: bounded like a failed POST
            log.warning("webhook of job %s: %s", task.job, type(exc).__name__)
            await self._failed(msg, task, attempt, final=attempt >= self.attempts)

    async def _attempt(self, msg: Msg, task: _Task, attempt: int) -> None:
        rendered = await self.render(task.tenant, task.job)
        if rendered is None:
            await _settle(msg.ack())
            return
        url, body = rendered
        try:
            target = await self.egress.check(url)
        except EgressRefused as exc:
            log.warning("webhook of job %s refused: %s", task.job, exc)
            await self._failed(msg, task, attempt, final=True)
            return
        if await self._post(target, body, task.job, attempt):
            with contextlib.suppress(Exception):
                await self.record(task.tenant, task.job, True, attempt)
            await _settle(msg.ack())
        else:
            await self._failed(msg, task, attempt, final=attempt >= self.attempts)

    async def _failed(self, msg: Msg, task: _Task, attempt: int, *, final: bool) -> None:
        if not final:
            await _settle(msg.nak(delay=self._delay(attempt)))
            return
        log.warning("webhook of job %s failed %d time(s); giving up", task.job, attempt)
        with contextlib.suppress(Exception):
            await self.record(task.tenant, task.job, False, attempt)
        await _settle(msg.term())

    def _delay(self, attempt: int) -> float:
        return self.backoff[min(attempt - 1, len(self.backoff) - 1)]

    async def _post(self, target: Target, body: bytes, job_id: str, attempt: int) -> bool:
        assert self._client is not None
        headers = {
            "host": target.host_header,
            "content-type": "application/json",
            ID_HEADER: job_id,
            ATTEMPT_HEADER: str(attempt),
            "user-agent": "llmq-webhooks",
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        try:
            resp = await self._client.post(
                target.pinned_url, content=body, headers=headers, extensions=extensions
            )
        except httpx.HTTPError as exc:
            # The host only: the path and query of a webhook URL may carry a token.
            log.info("webhook of job %s to %s: %s", job_id, target.host, type(exc).__name__)
            return False
        return 200 <= resp.status_code < 300


async def _settle(reply: Awaitable[None]) -> None:
    """Ack, nak or term; if NATS is away the message comes back after ack_wait, which the
    consumer's `max_deliver` bounds."""
    with contextlib.suppress(Exception):
        await reply
