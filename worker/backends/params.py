"""Which request fields a translating backend honours: every other one is a 400 naming it.

A translating backend builds a new body for another protocol, so a field it does not map would
vanish without a trace. `check_fields` reads the client's top-level fields (as raw bytes, no
deep decode) and refuses the first one the backend has no mapping for; a field sent as null is
the same as a field not sent. Value checks (`n` > 1, `logprobs: true`) are the backend's.
"""

from __future__ import annotations

from typing import Final

import msgspec

from llmq.schemas.openai import raw_fields_decoder
from llmq.worker.backends.base import BackendError, Call, unsupported_parameter

_NULL: Final = b"null"
_FALSY: Final = frozenset({b"null", b"false"})

ALWAYS: Final = frozenset({"model", "stream", "stream_options", "n"})
"""The gateway's own fields (it sets them for every upstream), and `n` (checked by value)."""
NO_EFFECT: Final = frozenset({"user", "metadata"})
"""Accepted and not sent: they label the request and change nothing in the answer."""
OFF_ONLY: Final = frozenset({"logprobs", "store", "echo"})
"""Accepted when false or null (the default behaviour), refused when asked for."""


def check_fields(call: Call, mapped: frozenset[str], backend: str) -> None:
    """Raise 400 `unsupported_parameter` for the first field `backend` cannot honour."""
    for key, value in raw_fields_decoder.decode(call.body).items():
        if key in mapped or key in ALWAYS or key in NO_EFFECT:
            continue
        raw = bytes(value).strip()
        if raw == _NULL or (key in OFF_ONLY and raw in _FALSY):
            continue
        raise unsupported_parameter(key, backend)
    if call.choices > 1:
        raise unsupported_parameter("n", backend, "it generates one choice per request")


class _TopK(msgspec.Struct):
    top_k: int | None = None


_top_k_decoder = msgspec.json.Decoder(_TopK)


def top_k(body: bytes) -> int | None:
    """vLLM-style `top_k` (not in OpenAI's schema), which Anthropic and Ollama take."""
    try:
        return _top_k_decoder.decode(body).top_k
    except msgspec.ValidationError:
        raise BackendError(
            "`top_k` must be an integer", status=400, type="invalid_request_error", param="top_k"
        ) from None
