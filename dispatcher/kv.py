"""Small tools over JetStream key-value buckets: create-once, compare-and-set, scans and a
watch that survives server restarts.

Every state change of a job or batch is a compare-and-set on the key's revision, so several
api replicas can act on the same record and exactly one of two racing changes lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from llmq._fast import nats as fast_nats
from llmq.dispatcher.tasks import stop_task

log = logging.getLogger(__name__)

T = TypeVar("T")

_DELETES = ("DEL", "PURGE")
_encoder = msgspec.json.Encoder()


class Conflict(Exception):
    """A compare-and-set lost too many times in a row."""


async def create_once(kv: KeyValue, key: str, value: bytes) -> bool:
    """Store `value` under `key` unless the key exists; True if this call stored it.

    A retried call whose first attempt did land (its reply was lost) answers False: the key
    holds a value either way, and the first value is the one that counts.
    """
    try:
        await kv.create(key, value)
        return True
    except KeyWrongLastSequenceError:
        return False


async def read(kv: KeyValue, key: str, decoder: msgspec.json.Decoder[T]) -> tuple[T, int] | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    return decoder.decode(entry.value), int(entry.revision or 0)


async def read_raw(kv: KeyValue, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return entry.value


async def mutate(
    kv: KeyValue,
    key: str,
    decoder: msgspec.json.Decoder[T],
    change: Callable[[T], T | None],
    attempts: int = 50,
) -> tuple[T, int, bool] | None:
    """Apply `change` to the current record with compare-and-set, retrying on conflicts.

    `change` gets a private copy and returns the new record, or None to leave it as it is.
    Returns (record, revision, changed), or None when the key does not exist.
    """
    for _ in range(attempts):
        current = await read(kv, key, decoder)
        if current is None:
            return None
        record, revision = current
        new = change(record)
        if new is None:
            return record, revision, False
        try:
            revision = await kv.update(key, _encoder.encode(new), last=revision)
        except KeyWrongLastSequenceError:
            continue
        return new, revision, True
    raise Conflict(key)


async def scan(
    kv: KeyValue, pattern: str, *, meta_only: bool = False, timeout: float = 30.0
) -> dict[str, bytes]:
    """Every current key matching `pattern` with its value (b'' when `meta_only`).

    nats-py's watcher may send its "that was all" marker before entries the server had
    already pushed reach us (the consumer-info reply overtakes them), which would make a scan
    miss keys. So the marker only ends the scan once we have handled as many entries as the
    server says it delivered; deletes are watched too, so that every delivery is counted.
    """
    out: dict[str, bytes] = {}
    watcher = await open_watch(
        kv, pattern, meta_only=meta_only, inactive_threshold=SCAN_CONSUMER_IDLE
    )
    handled = 0
    marked = False
    try:
        async with asyncio.timeout(timeout):
            async for entry in watcher:
                if entry is None:
                    marked = True
                else:
                    handled += 1
                    if entry.operation in _DELETES:
                        out.pop(entry.key, None)
                    else:
                        out[entry.key] = entry.value or b""
                if marked and await fast_nats.watcher_caught_up(watcher, handled):
                    break
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
        await fast_nats.delete_watcher_consumer(watcher)
    return out


SCAN_CONSUMER_IDLE = 5.0
"""Seconds nats-server keeps a scan's consumer once nobody listens, should deleting it fail
or the nats-py gate be shut (nats-py's default for a watch is 5 minutes: a flood of scans
would pile them up)."""


async def open_watch(kv: KeyValue, pattern: str, **options: Any) -> KeyValue.KeyWatcher:
    """`kv.watch`, but a cancellation while the watch is being set up does not leak it (a
    leaked watcher's callback blocks once its queue fills, and then the connection's drain
    never ends)."""
    creating = asyncio.ensure_future(kv.watch(pattern, **options))
    try:
        return await asyncio.shield(creating)
    except asyncio.CancelledError:

        def close(future: asyncio.Future[KeyValue.KeyWatcher]) -> None:
            if not future.cancelled() and future.exception() is None:
                stopping = asyncio.ensure_future(future.result().stop())
                _closing.add(stopping)
                stopping.add_done_callback(_closing.discard)

        creating.add_done_callback(close)
        raise


_closing: set[asyncio.Future[None]] = set()


class Follower:
    """Follows the keys of a bucket matching a pattern: `on_entry(key, value or None)` for
    each current value and every later change, `on_synced()` after each full replay.

    The watch is re-opened (a full replay) after an error or `resync` seconds of silence, so
    a nats-server restart or a stalled ordered consumer never leaves us with a stale view.
    Handlers must therefore be idempotent.
    """

    def __init__(
        self,
        kv: KeyValue,
        pattern: str,
        on_entry: Callable[[str, bytes | None], None],
        on_synced: Callable[[], None] | None = None,
        resync: float = 30.0,
        *,
        name: str = "follower",
    ) -> None:
        self.kv = kv
        self.pattern = pattern
        self.on_entry = on_entry
        self.on_synced = on_synced
        self.resync = resync
        self.name = name
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    async def restart(self) -> None:
        """Re-open the watch now (a full replay): after a reconnect the old one may be gone."""
        await self.stop()
        self.start()

    async def _run(self) -> None:
        while True:
            watcher = None
            try:
                watcher = await open_watch(self.kv, self.pattern)
                while True:
                    try:
                        entry = await watcher.updates(timeout=self.resync)
                    except (NatsTimeoutError, TimeoutError):
                        break  # silence: re-open, which replays everything
                    if entry is None:
                        self.synced.set()
                        if self.on_synced is not None:
                            self.on_synced()
                        continue
                    deleted = entry.operation in _DELETES or entry.value is None
                    self.on_entry(entry.key, None if deleted else entry.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: watch of %s failed: %s", self.name, self.pattern, exc)
                await asyncio.sleep(0.5)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
