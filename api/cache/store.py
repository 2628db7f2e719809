"""The response cache's entries in Valkey/Redis, under their own prefix (`llmq:cache:`),
bounded per tenant scope (bytes and entries, `CacheSettings`): a write past a bound evicts
the scope's entries closest to expiring, in the same atomic script (`put.lua`). Every entry
expires with its TTL. docs/benchmarks.md says why Valkey and not a JetStream bucket.

Entries are msgpack (`Entry`), sealed with AES-GCM when `LLMQ_CACHE_KEY` is set (`seal`).
A store that is away or slow never fails a request: a lookup then misses, a write is lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from llmq.api.cache.seal import Seal
from llmq.api.tenancy.pipeline import ScriptPipe
from llmq.schemas import names
from llmq.schemas.settings import CacheSettings

log = logging.getLogger(__name__)

PURGE_BATCH = 500


class Entry(msgspec.Struct, array_like=True):
    """One cached answer, as the job gave it."""

    kind: str
    stream: bool
    created: float
    """Unix seconds it was stored (`x-llmq-cache-age`)."""
    model: str
    frames: list[bytes] = []
    """A streamed answer: each chunk frame as relayed (several chunks may share one)."""
    body: bytes = b""
    """A whole answer: the JSON body."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Entry)


@dataclass(frozen=True, slots=True)
class Stored:
    """What a write did: bytes stored (0: not stored, too large), entries evicted, the
    scope's bytes after."""

    written: int
    evicted: int
    size: int


class CacheStore:
    def __init__(self, redis: Redis, settings: CacheSettings) -> None:
        """`redis`: a client that returns bytes (`decode_responses=False`)."""
        self.redis = redis
        self.settings = settings
        self.seal = Seal(settings.cache_key)
        self._put = redis.register_script(
            resources.files("llmq.api.cache").joinpath("put.lua").read_text()
        )
        piped = ScriptPipe.serves(redis)
        self.pipe = ScriptPipe(redis) if piped else None
        """Lookups, auto-pipelined as the quota's calls are (a quarter of redis-py's CPU per
        command); None in a Cluster."""
        self.write_pipe = ScriptPipe(redis) if piped else None
        """Writes, on a connection of their own: a lookup never waits behind a write."""

    async def _command(self, *command: Any, pipe: ScriptPipe | None = None) -> Any:
        if pipe is None:
            return await self.redis.execute_command(*command)
        return await pipe.execute(*command)

    async def get(self, scope: str, digest: str) -> Entry | None:
        key = names.cache_entry_key(scope, digest)
        try:
            raw = await self._command("GET", key, pipe=self.pipe)
        except (RedisError, OSError, UnicodeDecodeError) as exc:
            log.warning("response cache unavailable: %s", exc)
            return None
        if raw is None:
            return None
        opened = self.seal.open(raw if isinstance(raw, bytes) else raw.encode(), key.encode())
        if opened is None:
            return None
        try:
            return _decoder.decode(opened)
        except msgspec.DecodeError:
            return None

    async def put(self, scope: str, digest: str, entry: Entry, ttl: float) -> Stored:
        key = names.cache_entry_key(scope, digest)
        value = self.seal.close(_encoder.encode(entry), key.encode())
        s = self.settings
        if len(value) > s.cache_max_entry_bytes or ttl <= 0:
            return Stored(0, 0, 0)
        keys = [key, names.cache_index_key(scope), names.cache_sizes_key(scope)]
        args: list[bytes | str | int] = [
            digest,
            value,
            max(1, int(ttl * 1000)),
            int(time.time() * 1000),
            s.cache_tenant_max_bytes,
            s.cache_tenant_max_entries,
        ]
        try:
            call = ("EVALSHA", self._put.sha, len(keys), *keys, *args)
            pipe = self.write_pipe
            try:
                raw = await self._command(*call, pipe=pipe)
            except NoScriptError:
                await self._command("SCRIPT", "LOAD", self._put.script, pipe=pipe)
                raw = await self._command(*call, pipe=pipe)
        except (RedisError, OSError) as exc:
            log.warning("response cache write lost: %s", exc)
            return Stored(0, 0, 0)
        stored, evicted, size = (raw.decode() if isinstance(raw, bytes) else raw).split("|")
        return Stored(len(value) if stored == "1" else 0, int(evicted), int(size))

    async def purge(self, scope: str) -> dict[str, int]:
        """Delete every entry of a tenant scope (a deleted tenant); how many keys went
        (nothing said when there were none)."""
        deleted = 0
        batch: list[bytes | str] = []
        async for key in self.redis.scan_iter(match=names.cache_scope_pattern(scope), count=500):
            batch.append(key)
            if len(batch) >= PURGE_BATCH:
                deleted += await self.redis.delete(*batch)
                batch = []
        if batch:
            deleted += await self.redis.delete(*batch)
        return {"cache_keys": deleted} if deleted else {}
