"""The final usage of one interactive job, as its worker reports it on `llmq.usage.…`.

The api that relays the job books its usage from the `done` frame; this report is the
durable second path: a shared consumer on the api side books it too,
and the ledger keeps only the first booking of a job id, so the job is booked exactly once
even when the api that submitted it died mid-stream.
"""

from __future__ import annotations

from typing import Final

import msgspec

from llmq.schemas.openai import Usage


class FinalUsage(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    tenant: str
    model: str
    """The model the job was queued for (the reservation's model)."""
    job_id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: bool = False
    """The job ended with an error frame: booked as failed."""
    cached_tokens: int = 0
    """Part of `prompt_tokens` read from the upstream's prompt cache."""
    cache_write_tokens: int = 0
    """Part of `prompt_tokens` written to the upstream's prompt cache (Anthropic)."""
    lease: str = ""
    """The job envelope's `Llmq-Lease`: it was admitted from a lease, booked as such."""


def cache_counts(usage: Usage) -> tuple[int, int]:
    """(cache reads, cache writes) of a reported usage: `prompt_tokens_details.cached_tokens`
    and `cache_creation_tokens` (how the Anthropic backend reports its cache writes)."""
    details = usage.prompt_tokens_details
    written = details.get("cache_creation_tokens") if isinstance(details, dict) else None
    return usage.cached_tokens, written if isinstance(written, int) else 0


usage_encoder: Final = msgspec.json.Encoder()
usage_decoder: Final = msgspec.json.Decoder(FinalUsage)
