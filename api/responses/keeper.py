"""What happens to an interactive response when its job ends: stored (when `store`) and
appended to its conversation; a failed one is stored `failed`, so the id its stream
announced stays readable (`relay.ResponseEnd` is what `ResponseRun` calls)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from llmq.api.responses.records import ResponseRecords
from llmq.schemas.responses import StoredResponse

_fields = msgspec.json.Decoder(dict[str, Any])


@dataclass(slots=True)
class Keeper:
    """One interactive response's end: stored (when `store`) and appended to its
    conversation; a failed one is stored `failed`, so its announced id stays readable."""

    records: ResponseRecords
    stored: StoredResponse
    keep: bool

    async def final(self, body: bytes) -> None:
        if self.keep or self.stored.conversation is not None:
            self.stored.response = _fields.decode(body)
            await self.records.finish(self.stored, keep=self.keep)

    async def failed(self, error: dict[str, Any]) -> dict[str, Any]:
        response = {**self.stored.response, "status": "failed", "error": error}
        self.stored.response = response
        if self.keep:
            await self.records.finish(self.stored, keep=True)
        return response


class NoKeeper:
    """A cached or joined answer: nothing is stored."""

    async def final(self, body: bytes) -> None:
        return None

    async def failed(self, error: dict[str, Any]) -> dict[str, Any]:
        return {"status": "failed", "error": error}
