"""Noticing a Valkey that lost llmq's data.

A Valkey (or Redis) that restarts without persistence, or is replaced by a new server, comes
back empty: no tenants, no keys, no ledger, and every caller is a 401. It still answers
PING, so `/ready` alone would say ok. Hence a marker: the first api to meet a new
installation writes a random value into Valkey (`names.DATA_MARKER_KEY`) and the same value
into NATS (`names.INSTALL_BUCKET`, file storage). Later, Valkey without the marker while
NATS remembers it means Valkey lost its data: `/ready` fails on `redis_data` until its data
is restored from a backup (the marker comes back with it), or an operator accepts the empty
Valkey by writing NATS's value back (docs/operations.md). NATS without it (a new NATS, or
one that lost its file store) takes Valkey's value: the tenants are what matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from redis.asyncio import Redis

from llmq.dispatcher import streams
from llmq.dispatcher.tasks import retry, stop_task
from llmq.schemas import names

log = logging.getLogger(__name__)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def _read(kv: KeyValue, key: str) -> str | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return _text(entry.value)


class DataMarker:
    """The installation's marker value once known; `lost()` asks Valkey whether it still
    has it."""

    def __init__(
        self,
        redis: Redis,
        js: JetStreamContext,
        target: str,
        replicas: int = 1,
        create: bool = True,
    ) -> None:
        """`target`: where Valkey is (its URL, sentinels or cluster nodes): NATS keeps one
        marker per address, so an installation moved to another Valkey on purpose starts
        afresh there, while a server that comes back empty at the same address is noticed."""
        self._redis = redis
        self._key = f"{names.DATA_MARKER_KV}.{hashlib.sha256(target.encode()).hexdigest()[:16]}"
        self._js = js
        self._replicas = replicas
        self._create = create
        """False: `llmq provision` makes the bucket (LLMQ_NATS_PROVISION=false)."""
        self.value: str | None = None
        """The marker as NATS keeps it; None until the first look succeeded."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Look in the background (Valkey or NATS may be away; no start waits for it)."""
        self._task = asyncio.create_task(
            retry(self.settle, "reading the Valkey data marker", max_pause=5.0),
            name="data-marker",
        )

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def settle(self) -> None:
        """Agree on the marker: write one into a new installation, copy Valkey's into a NATS
        that lacks it, or learn NATS's value (Valkey may lack it: `lost()`)."""
        kv = await streams.install_bucket(self._js, self._replicas, self._create)
        in_valkey = _text(await self._redis.get(names.DATA_MARKER_KEY))
        in_nats = await _read(kv, self._key)
        if in_nats is None:
            if in_valkey is None:  # a new installation: the first api writes both
                in_valkey = secrets.token_hex(16)
                if not await self._redis.set(names.DATA_MARKER_KEY, in_valkey, nx=True):
                    in_valkey = _text(await self._redis.get(names.DATA_MARKER_KEY))
            assert in_valkey is not None
            with contextlib.suppress(KeyWrongLastSequenceError):  # another api was first
                await kv.create(self._key, in_valkey.encode())
            in_nats = await _read(kv, self._key)
        self.value = in_nats
        if in_valkey != in_nats:
            log.error("Valkey %s", self.describe(in_valkey))

    async def lost(self) -> str:
        """Why Valkey does not hold this installation's data, empty when it does (or while
        the marker is not known yet). Raises when Valkey does not answer."""
        if self.value is None:
            return ""
        found = _text(await self._redis.get(names.DATA_MARKER_KEY))
        return "" if found == self.value else self.describe(found)

    def describe(self, found: str | None) -> str:
        if found is None:
            return (
                f"lacks llmq's data marker ({names.DATA_MARKER_KEY}): it lost its data (a "
                "restart without persistence, a new server); restore it from a backup, or "
                "accept it as empty (docs/operations.md)"
            )
        return (
            f"holds another installation's data ({names.DATA_MARKER_KEY} differs from "
            f"NATS's {names.INSTALL_BUCKET}); point llmq at its own Valkey"
        )
