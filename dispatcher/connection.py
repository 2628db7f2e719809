"""Opening a NATS connection the same way in every llmq process, and putting back what the
process needs on the server after every reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmq.dispatcher.tasks import retry, stop_task

log = logging.getLogger(__name__)


async def connect(
    url: str, name: str, timeout: float = 5.0, on_reconnect: Callable[[], None] | None = None
) -> Client:
    """Connect with reconnects forever: a NATS restart must never need a process restart.
    `on_reconnect` is called (synchronously, in the client's reconnect task) once per
    reconnect."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")
        if on_reconnect is not None:
            on_reconnect()

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnected,
    )


async def disconnect(nc: Client) -> None:
    """Drain, and close if draining fails: with the server away, `drain()` raises and the
    client would otherwise go on reconnecting forever after its owner stopped."""
    if nc.is_closed:
        return
    try:
        await nc.drain()
    except Exception as exc:
        log.debug("nats drain failed: %s", exc)
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await nc.close()


Step = Callable[[], Awaitable[object]]


class Provisioner:
    """Runs a process's provisioning steps again after each reconnect.

    A nats-server that restarted has lost its memory streams and buckets (LLMQ_JOBS,
    LLMQ_WORKERS) and with them the consumers and watches on them; a new cluster node may
    lack them too. Every step is idempotent, so they simply all run again, in order, each
    retried until it succeeds. Give `reconnected` to `connect` as `on_reconnect`.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[str, Step]] = []
        self.rounds = 0
        """Completed rounds of re-provisioning (for tests and `llmq status`)."""
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, what: str, step: Step) -> None:
        self.steps.append((what, step))

    def reconnected(self) -> None:
        self._due.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="provisioner")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _loop(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            for what, step in list(self.steps):
                await retry(step, f"re-provisioning ({what}) after a reconnect")
            self.rounds += 1
            log.info("re-provisioned after a reconnect: %s", ", ".join(w for w, _ in self.steps))


class ConnectionMetrics(Collector):
    """`llmq_nats_connected` and `llmq_nats_reconnects_total` of a process's connection, read
    at scrape time (the connection may not exist yet when the registry is built)."""

    def __init__(self, connection: Callable[[], Client | None]) -> None:
        self._connection = connection

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        nc = self._connection()
        connected = nc is not None and nc.is_connected
        reconnects = nc.stats["reconnects"] if nc is not None else 0
        return [
            GaugeMetricFamily(
                "llmq_nats_connected", "1 while connected to NATS.", value=float(connected)
            ),
            CounterMetricFamily(
                "llmq_nats_reconnects",
                "Reconnects to NATS since start (each re-provisions streams and consumers).",
                value=reconnects,
            ),
        ]
