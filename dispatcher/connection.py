"""Opening a NATS connection the same way in every llmq process (credentials, TLS, bounded
start), and putting back what the process needs on the server after every reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmq._fast import nats as fast_nats
from llmq.dispatcher.tasks import retry, stop_task
from llmq.schemas.settings import ConnectionSettings

log = logging.getLogger(__name__)


class NatsRefused(RuntimeError):
    """NATS refused this process's credentials or TLS at start: retrying cannot help, so the
    process stops with this message instead of retrying forever."""


def redact_url(url: str) -> str:
    """Server URL(s) (comma-separated) without user:password@ and query string, for logs."""
    out = []
    for part in url.split(","):
        part = part.strip()
        if not part:
            continue
        parts = urlsplit(part)
        if parts.netloc and "@" in parts.netloc:
            part = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
            parts = urlsplit(part)
        out.append(parts._replace(query="", fragment="").geturl())
    return ",".join(out)


def has_password(url: str) -> bool:
    """True when a server URL carries a secret (userinfo or `password=` in its query)."""
    return any(
        "@" in urlsplit(p.strip()).netloc or "password=" in urlsplit(p.strip()).query
        for p in url.split(",")
    )


def tls_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client TLS context verifying the server against `ca` (the system's CAs when empty),
    presenting `cert`/`key` when given (mutual TLS)."""
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


def auth_options(conn: ConnectionSettings) -> dict[str, Any]:
    """`nats.connect` keyword arguments for the credentials and TLS `conn` configures."""
    options: dict[str, Any] = {"inbox_prefix": conn.nats_inbox_prefix or "_INBOX"}
    if conn.nats_creds:
        options["user_credentials"] = conn.nats_creds
    if conn.nats_nkey:
        options["nkeys_seed"] = conn.nats_nkey
    if conn.nats_user:
        options["user"] = conn.nats_user
        options["password"] = conn.secret("nats_password")
    token = conn.secret("nats_token")
    if token:
        options["token"] = token
    if conn.nats_tls_ca or conn.nats_tls_cert:
        options["tls"] = tls_context(conn.nats_tls_ca, conn.nats_tls_cert, conn.nats_tls_key)
    return options


_REFUSALS = ("authorization violation", "authentication", "tls", "secure connection")


def _refused(exc: BaseException) -> bool:
    """An error at start that a retry cannot cure: credentials or TLS."""
    if isinstance(
        exc,
        ssl.SSLError
        | nats_errors.AuthorizationError
        | nats_errors.InvalidUserCredentialsError
        | nats_errors.SecureConnRequiredError
        | nats_errors.SecureConnWantedError
        | nats_errors.SecureConnFailedError,
    ):
        return True
    return isinstance(exc, nats_errors.Error) and any(
        word in str(exc).lower() for word in _REFUSALS
    )


def startup_deadline(conn: ConnectionSettings) -> float | None:
    """The monotonic time at which a starting process stops retrying (`startup_timeout`)."""
    return time.monotonic() + conn.startup_timeout if conn.startup_timeout else None


async def connect(
    url: str,
    name: str,
    timeout: float = 5.0,
    on_reconnect: Callable[[], None] | None = None,
    *,
    conn: ConnectionSettings | None = None,
    reconnect: bool = True,
    deadline: float | None = None,
) -> Client:
    """Connect with the credentials and TLS of `conn` (default: from the environment).

    With `reconnect` (the api, the worker, `llmq top`) a server not up yet is waited for:
    one bounded attempt per server, then again with backoff (logging the URL, never its
    credentials) until the monotonic `deadline` (None: forever; TimeoutError then); once
    connected, reconnects go on forever: a NATS restart never needs a process restart. A
    refusal of the credentials or TLS at start raises `NatsRefused` at once. Without
    `reconnect` (one-shot CLI commands) one attempt per server is made, bounded by
    `timeout`. `on_reconnect` is called (synchronously, in the client's reconnect task)
    once per reconnect. Cancelling the caller stops the waiting at once."""
    conn = conn if conn is not None else ConnectionSettings()
    if not reconnect:
        return await _connect_once(url, name, timeout, None, conn, reconnect=False)
    shown = redact_url(url)

    async def attempt() -> Client:
        try:
            return await _connect_once(url, name, timeout, on_reconnect, conn, reconnect=True)
        except NatsRefused:
            raise
        except Exception as exc:
            raise ConnectionError(str(exc) or type(exc).__name__) from exc

    return await retry(
        attempt,
        f"{name} waiting for NATS at {shown}",
        deadline=deadline,
        retry_on=ConnectionError,
    )


def _refusal(
    exc: Exception, nc: Client, shown: str, name: str, conn: ConnectionSettings
) -> NatsRefused | None:
    """A refusal at start (credentials, TLS, a client certificate the server wants) as the
    error that names what to check; None for any other error."""
    if _refused(exc):
        return NatsRefused(
            f"NATS at {shown} refused {name!r} (credentials or TLS): "
            f"{exc or type(exc).__name__}; check LLMQ_NATS_CREDS, _NKEY, _USER/_PASSWORD, "
            "_TOKEN and LLMQ_NATS_TLS_CA/_CERT/_KEY"
        )
    if fast_nats.server_info(nc).get("tls_verify") and not conn.nats_tls_cert:
        return NatsRefused(
            f"NATS at {shown} refused {name!r}: it requires a client certificate (mutual "
            "TLS); set LLMQ_NATS_TLS_CERT and LLMQ_NATS_TLS_KEY"
        )
    return None


async def _connect_once(
    url: str,
    name: str,
    timeout: float,
    on_reconnect: Callable[[], None] | None,
    conn: ConnectionSettings,
    *,
    reconnect: bool,
) -> Client:
    """One connection attempt: each server tried twice at most, the whole bounded."""
    starting = True
    shown = redact_url(url)
    errors_told: list[int] = []
    """Errors logged since the last reconnect (each outage is told once, at warning)."""

    async def on_error(exc: Exception) -> None:
        refusal = _refusal(exc, nc, shown, name, conn) if starting else None
        if refusal is not None:
            raise refusal from exc
        if reconnect and not starting:
            # once per outage: a reconnect attempt every half second would repeat it
            level = logging.DEBUG if errors_told else logging.WARNING
            log.log(level, "nats error (%s): %s", shown, exc or type(exc).__name__)
            errors_told.append(1)

    nc = Client()
    fast_nats.install(nc)  # headers parsed and encoded with less work, same results
    servers = [u.strip() for u in url.split(",") if u.strip()]
    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "connect_timeout": timeout,
        "error_cb": on_error,
        **auth_options(conn),
    }
    # nats-py retries a first connect forever when max_reconnect_attempts is negative (or
    # 0): one retry per server here, bounded; the caller retries with backoff.
    options.update(max_reconnect_attempts=1, reconnect_time_wait=0.1)
    if reconnect:
        options.update(_reconnect_callbacks(nc, shown, errors_told, on_reconnect))
    else:
        options.update(allow_reconnect=False)
    try:
        async with asyncio.timeout(timeout * (2 * len(servers) + 1)):
            await nc.connect(**options)
    except BaseException:
        # A client stopped mid-handshake may never finish closing its transport.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2.0)
        raise
    if reconnect:  # connected: from now on reconnect forever, every half second
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 0.5
    starting = False
    return nc


def _reconnect_callbacks(
    nc: Client, shown: str, errors_told: list[int], on_reconnect: Callable[[], None] | None
) -> dict[str, Any]:
    """Reconnects allowed, each disconnect and reconnect logged (the URL without its
    credentials); a reconnect clears the errors told and calls `on_reconnect`. Our own
    close also calls the disconnect callback: that one is no outage and is not logged."""

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats disconnected from %s; reconnecting", shown)

    async def on_reconnected() -> None:
        errors_told.clear()
        log.info("nats reconnected to %s", shown)
        if on_reconnect is not None:
            on_reconnect()

    return {
        "allow_reconnect": True,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnected,
    }


async def disconnect(nc: Client, timeout: float = 5.0) -> None:
    """Drain (bounded by `timeout`), and close if draining fails or NATS is away: draining
    a disconnected client waits for a server that may never come back, and the client would
    otherwise go on reconnecting forever after its owner stopped."""
    if nc.is_closed:
        return
    if nc.is_connected:
        try:
            async with asyncio.timeout(timeout):
                await nc.drain()
        except Exception as exc:
            log.debug("nats drain failed: %s", exc)
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2.0)


async def unsubscribe(sub: Subscription, timeout: float = 2.0) -> None:
    """Drop a subscription at shutdown, bounded and quiet: on a closed, draining or
    reconnecting connection nats-py raises (`ConnectionClosedError`) or may wait, and the
    server forgets the interest with the connection anyway, so a stop never fails on it."""
    try:
        async with asyncio.timeout(timeout):
            await sub.unsubscribe()
    except Exception as exc:
        log.debug("nats unsubscribe from %s skipped: %s", sub.subject, exc or type(exc).__name__)


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
