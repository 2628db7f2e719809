"""The model table: aliases (one public name for another), per-model defaults (the
temperature / max_tokens a model gets when the request leaves them out) and per-model
settings (`[models."<name>"]`: what llmq enforces for the model, such as the largest
`max_tokens` a request may ask for). docs/routing.md describes the syntax.

Read from `LLMQ_MODELS_FILE` (TOML) and `LLMQ_ALIASES`; the file is re-read when it
changes, so an operator edits it without restarting the api:

    [aliases]
    gpt-4 = "openai:gpt-4.1-mini"
    fast = "echo"

    [defaults.echo]
    temperature = 0.2
    max_tokens = 256

    [models."openai:gpt-4.1-mini"]
    max_tokens = 32768
    fallbacks = ["echo"]
    max_queue_wait = 5.0
    cache = { ttl = "1h" }
"""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from typing import Annotated, Literal

import msgspec

from llmq.api.tenancy.models import parse_duration
from llmq.dispatcher.tasks import stop_task
from llmq.schemas.settings import Settings

log = logging.getLogger(__name__)


class ModelDefaults(msgspec.Struct, forbid_unknown_fields=True):
    temperature: float | None = None
    max_tokens: int | None = None


class CacheEntry(msgspec.Struct, forbid_unknown_fields=True):
    """`cache = { ttl = "1h" }`: the model's answers are cached (docs/cache.md)."""

    ttl: str | float
    """How long an answer stays cached: seconds, or `30m`, `1h`, `7d`."""


class ModelEntry(msgspec.Struct, forbid_unknown_fields=True):
    """One `[models."<name>"]` table, keyed by the model's own name (not an alias). Every
    field is optional, so the table grows by adding fields; an unknown one rejects the file."""

    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """The most output tokens a request may ask for (`max_tokens` or
    `max_completion_tokens`); more is a 400 before admission."""
    fallbacks: list[str] = []
    """Models tried in order when this one cannot start the request (api/engine/model_chain.py);
    only the requested model's list is followed, never a fallback's own."""
    max_queue_wait: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Seconds of estimated queue wait above which a request moves to the next fallback."""
    builtin_tools: Literal["omit", "reject", "pass"] = "omit"
    """What a Responses request's built-in tools (web search, file search, MCP …) become on
    this model: `omit` them (named in the `x-llmq-omitted` header), `reject` the request
    (400 naming the tool), or `pass` them to a worker whose upstream serves them itself
    (`--responses-passthrough`)."""
    cache: CacheEntry | None = None
    """Cache the model's answers per tenant (api/cache/); absent: only a key with a cache
    TTL of its own caches them."""
    cache_sampled: bool = False
    """Cache sampled requests too (`n` > 1, or a temperature above 0 without `seed`)."""
    cache_hit_price: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """USD booked for an answer served from the cache or by joining a running job."""


class ModelFile(msgspec.Struct, forbid_unknown_fields=True):
    aliases: dict[str, str] = {}
    defaults: dict[str, ModelDefaults] = {}
    models: dict[str, ModelEntry] = {}


def _check_consistent(parsed: ModelFile) -> None:
    """A default may not ask for more than the model's own limit allows; a model may not
    fall back to itself; a cache TTL is a duration."""
    for model, table in parsed.models.items():
        if model in table.fallbacks:
            raise msgspec.ValidationError(f'[models."{model}"] lists itself in fallbacks')
        if table.cache is not None:
            try:
                parse_duration(table.cache.ttl)
            except ValueError as exc:
                raise msgspec.ValidationError(f'[models."{model}"] cache.ttl: {exc}') from None
    for model, defaults in parsed.defaults.items():
        entry = parsed.models.get(model)
        limit = entry.max_tokens if entry is not None else None
        if defaults.max_tokens is not None and limit is not None and defaults.max_tokens > limit:
            raise msgspec.ValidationError(
                f"[defaults.{model}] max_tokens {defaults.max_tokens} is above "
                f'[models."{model}"] max_tokens {limit}'
            )


class ModelTable:
    def __init__(self, settings: Settings) -> None:
        self.path = settings.tenancy.models_file
        self._env_aliases = dict(
            (a.strip(), b.strip())
            for a, _, b in (s.partition("=") for s in settings.tenancy.aliases)
        )
        self.aliases: dict[str, str] = dict(self._env_aliases)
        self.defaults: dict[str, ModelDefaults] = {}
        self.models: dict[str, ModelEntry] = {}
        self._mtime = 0.0
        self._task: asyncio.Task[None] | None = None
        self._speed = settings.api.queue_tokens_per_second
        self._default_max_tokens = settings.tenancy.default_max_tokens
        if self.path:
            self.reload()

    def resolve(self, name: str) -> str:
        """The model an alias points to (one level: aliases do not chain)."""
        return self.aliases.get(name, name)

    def defaults_for(self, model: str) -> ModelDefaults | None:
        return self.defaults.get(model)

    def entry_for(self, model: str) -> ModelEntry | None:
        return self.models.get(model)

    def fallbacks_for(self, model: str) -> list[str]:
        """The models to try after `model`, in order, aliases resolved, no repeats."""
        entry = self.models.get(model)
        if entry is None:
            return []
        chain: list[str] = []
        for name in entry.fallbacks:
            resolved = self.resolve(name)
            if resolved != model and resolved not in chain:
                chain.append(resolved)
        return chain

    def max_queue_wait_for(self, model: str) -> float | None:
        entry = self.models.get(model)
        return entry.max_queue_wait if entry is not None else None

    def builtin_tools_for(self, model: str) -> str:
        entry = self.models.get(model)
        return entry.builtin_tools if entry is not None else "omit"

    def token_limit_for(self, model: str) -> int | None:
        """The model's largest `max_tokens`, when the table sets one."""
        entry = self.models.get(model)
        return entry.max_tokens if entry is not None else None

    def assumed_job_seconds(self, model: str) -> float | None:
        """Seconds a job of `model` is assumed to take while nothing is measured: its
        `max_tokens` at `queue_tokens_per_second` (None when that is 0)."""
        if self._speed <= 0:
            return None
        return (self.token_limit_for(model) or self._default_max_tokens) / self._speed

    def cache_ttl_for(self, model: str) -> float:
        """Seconds the model's answers stay cached by its table entry; 0: not cached."""
        entry = self.models.get(model)
        if entry is None or entry.cache is None:
            return 0.0
        return parse_duration(entry.cache.ttl)

    def reload(self) -> bool:
        """Re-read the file if it changed; a broken file keeps the previous table."""
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as exc:
            log.warning("models file %s unreadable: %s", self.path, exc)
            return False
        if mtime == self._mtime:
            return False
        try:
            with open(self.path, "rb") as f:
                parsed = msgspec.convert(tomllib.load(f), ModelFile)
            _check_consistent(parsed)
        except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            log.error("models file %s rejected, keeping the previous table: %s", self.path, exc)
            self._mtime = mtime
            return False
        self._mtime = mtime
        self.aliases = {**parsed.aliases, **self._env_aliases}
        self.defaults = parsed.defaults
        self.models = parsed.models
        log.info(
            "models file loaded: %d aliases, %d defaults, %d models",
            len(self.aliases),
            len(self.defaults),
            len(self.models),
        )
        return True

    def start(self, interval: float = 1.0) -> None:
        if self.path:
            self._task = asyncio.create_task(self._watch(interval), name="models-file")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload()
