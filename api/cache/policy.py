"""What the response cache may serve and store, and under which key.

The key is the tenant's scope, the model the attempt runs on and the job body in canonical
form: JSON with sorted keys, without `stream`, `stream_options`, `user` and `metadata` (they
change neither the answer nor who may see it). Hashed with SHA-256, so the key is fixed-size
whatever the body. Sampled requests (`n` > 1, or a temperature above 0 without `seed`; no
temperature is OpenAI's default 1) are cached only where the model table says
`cache_sampled = true`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from llmq.schemas.names import tenant_token

IGNORED: Final = frozenset({"stream", "stream_options", "user", "metadata"})
"""Body fields left out of the key."""
TTL_HEADER: Final = "x-llmq-cache-ttl"
STATUS_HEADER: Final = "x-llmq-cache"
AGE_HEADER: Final = "x-llmq-cache-age"

HIT: Final = "hit"
MISS: Final = "miss"
JOIN: Final = "join"
SKIP: Final = "skip"

_decoder = msgspec.json.Decoder(dict[str, Any])
_canonical = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class Choice:
    """What one request may do with the cache."""

    lookup: bool
    """Answer from a stored entry or a running identical job."""
    ttl: float
    """Seconds a new answer is stored; 0: not stored."""


NEVER: Final = Choice(False, 0.0)


def cache_key(scope: str, model: str, body: Any) -> str:
    """Hex SHA-256 of (tenant scope, model, canonical body); `body` is the decoded job body."""
    fields = {k: v for k, v in body.items() if k not in IGNORED}
    digest = hashlib.sha256(tenant_token(scope).encode())
    digest.update(b"\0" + model.encode() + b"\0")
    digest.update(_canonical.encode(fields))
    return digest.hexdigest()


def decode_body(body: bytes) -> dict[str, Any] | None:
    """The job body as a JSON object, None when it is not one (then nothing is cached)."""
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError:
        return None


SAMPLING_KINDS: Final = frozenset({"chat", "completion", "response", "message"})
"""Kinds whose answers are sampled; an embedding is the same every time."""


def is_sampled(kind: str, body: dict[str, Any]) -> bool:
    """More than one choice, or randomness without a seed."""
    if kind not in SAMPLING_KINDS:
        return False
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return True
    if body.get("seed") is not None:
        return False
    temperature = body.get("temperature", 1)
    return not isinstance(temperature, int | float) or temperature != 0


def cacheable_kind(kind: str, body: dict[str, Any]) -> bool:
    """A Responses request that is stored, in the background or continues a conversation
    has effects beyond its answer: never served from the cache. Nor is an `endpoint` job
    (moderations, images, audio, rerank): its answer is the upstream's own bytes, status
    and content type, which the cache's JSON or SSE replay does not represent."""
    if kind == "endpoint":
        return False
    if kind != "response":
        return True
    return (
        body.get("store") is False and not body.get("background") and not body.get("conversation")
    )


def choose(
    headers: Any, base_ttl: float, max_ttl: float, allow_sampled: bool, sampled: bool
) -> Choice:
    """The request's `Cache-Control` (`no-cache`: no lookup, `no-store`: no write) and
    `x-llmq-cache-ttl` (seconds, at most `max_ttl`; 0: no write) on the TTL the model table
    or the key gives (`base_ttl`, 0: the cache is off for this request). ValueError: an
    `x-llmq-cache-ttl` that is not a number of seconds."""
    if base_ttl <= 0 or (sampled and not allow_sampled):
        return NEVER
    control = {part.strip().lower() for part in headers.get("cache-control", "").split(",")}
    ttl = min(base_ttl, max_ttl)
    asked = headers.get(TTL_HEADER)
    if asked is not None:
        seconds = float(asked)  # ValueError: the caller's 400
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(asked)
        ttl = min(seconds, max_ttl)
    if "no-store" in control:
        ttl = 0.0
    return Choice("no-cache" not in control, ttl)
