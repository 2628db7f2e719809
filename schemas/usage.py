"""The final usage of one interactive job, as its worker reports it on `llmq.usage.…`.

The api that relays the job books its usage from the `done` frame; this report is the
durable second path (issue 12 finding 13): a shared consumer on the api side books it too,
and the ledger keeps only the first booking of a job id, so the job is booked exactly once
even when the api that submitted it died mid-stream.
"""

from __future__ import annotations

from typing import Final

import msgspec


class FinalUsage(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    tenant: str
    model: str
    """The model the job was queued for (the reservation's model)."""
    job_id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: bool = False
    """The job ended with an error frame: booked as failed."""


usage_encoder: Final = msgspec.json.Encoder()
usage_decoder: Final = msgspec.json.Decoder(FinalUsage)
