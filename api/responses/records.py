"""Stored responses as the client reads them: retrieve (a background response is brought up
to date from its async job), delete, cancel, list input items; and what happens once a
response ends (it is stored, and appended to its conversation exactly once).
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from llmq.api.errors import ApiError
from llmq.api.listing import not_found
from llmq.api.responses.conversation_store import ConversationStore
from llmq.api.responses.items import list_body, page
from llmq.dispatcher.batch.async_jobs import AsyncJobs
from llmq.dispatcher.batch.records import is_hex_id
from llmq.schemas.frames import Done, Failed
from llmq.schemas.responses import RESPONSE_PREFIX, StoredResponse

_fields = msgspec.json.Decoder(dict[str, Any])
_RUNNING = ("queued", "in_progress")
_ENDED_WELL = ("completed", "incomplete")


def public_hex(public_id: str, prefix: str) -> str | None:
    """The hex part of `resp_<hex>` / `conv_<hex>`, or None when it is not one of ours."""
    hex_part = public_id.removeprefix(prefix)
    return hex_part if public_id.startswith(prefix) and is_hex_id(hex_part) else None


class ResponseRecords:
    def __init__(self, store: ConversationStore, jobs: AsyncJobs) -> None:
        self.store = store
        self.jobs = jobs

    async def stored(self, tenant: str, public_id: str, param: str | None = None) -> StoredResponse:
        hex_id = public_hex(public_id, RESPONSE_PREFIX)
        found = await self.store.get_response(tenant, hex_id) if hex_id else None
        if found is None:
            raise not_found("response", public_id, param=param)
        return await self.refresh(found)

    async def get(self, tenant: str, public_id: str) -> dict[str, Any]:
        return (await self.stored(tenant, public_id)).response

    async def delete(self, tenant: str, public_id: str) -> dict[str, Any]:
        """Forget the response; a background one still running is cancelled first."""
        found = await self.stored(tenant, public_id)
        if found.background and found.response.get("status") in _RUNNING:
            await self.jobs.cancel(tenant, found.id)
        if not await self.store.delete_response(tenant, found.id):
            raise not_found("response", public_id)
        return {"id": public_id, "object": "response", "deleted": True}

    async def cancel(self, tenant: str, public_id: str) -> dict[str, Any]:
        found = await self.stored(tenant, public_id)
        if not found.background:
            raise ApiError(
                400,
                "Only responses created with background=true can be cancelled.",
                "invalid_request",
            )
        if found.response.get("status") in _RUNNING:
            await self.jobs.cancel(tenant, found.id)
            found = await self.refresh(found)
        return found.response

    async def input_items(
        self, tenant: str, public_id: str, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        found = await self.stored(tenant, public_id)
        data, has_more = page(found.input_items, limit, order, after)
        return list_body(data, has_more)

    async def refresh(self, record: StoredResponse) -> StoredResponse:
        """A background response brought in line with its async job (and stored so)."""
        if not record.background or record.response.get("status") not in _RUNNING:
            return record
        found = await self.jobs.get(record.tenant, record.id)
        if found is None:
            return record
        job, result = found
        if job.status in _RUNNING:
            record.response["status"] = job.status
            return record
        response = copy.deepcopy(record.response)
        if isinstance(result, Done) and result.body:
            response = _fields.decode(result.body)
        elif isinstance(result, Failed):
            code = "rate_limit_exceeded" if result.status == 429 else "server_error"
            response["status"] = "failed"
            response["error"] = {"code": code, "message": result.error.message}
        elif job.status == "cancelled":
            response["status"] = "cancelled"
        else:
            message = (job.error or {}).get("message") or "the response did not run"
            response["status"] = "failed"
            response["error"] = {"code": "server_error", "message": str(message)}
        response["background"] = True
        record.response = response
        await self.finish(record, keep=True)
        return record

    async def finish(self, record: StoredResponse, keep: bool) -> None:
        """Store an ended response (if `keep`) and append its items to its conversation,
        once even when several readers finish it at the same time."""
        if keep and record.background:  # only while it exists: a delete wins
            response = record.response

            def end(r: StoredResponse) -> StoredResponse | None:
                if r.response.get("status") not in _RUNNING:
                    return None
                return msgspec.structs.replace(r, response=response)

            await self.store.update_response(record.tenant, record.id, end)
        elif keep:
            await self.store.put_response(record)
        own = [*record.input_items, *record.response.get("output", [])]
        own_ids = [i["id"] for i in own if isinstance(i.get("id"), str)]
        if keep:
            await self.store.index_items(record.tenant, own_ids, f"r:{record.id}")
        elif record.conversation is not None:
            await self.store.index_items(record.tenant, own_ids, f"c:{record.conversation}")
        if record.conversation is None or record.response.get("status") not in _ENDED_WELL:
            return
        if keep:

            def claim(r: StoredResponse) -> StoredResponse | None:
                return None if r.appended else msgspec.structs.replace(r, appended=True)

            if not await self.store.update_response(record.tenant, record.id, claim):
                return
        items = own
        await self.store.update_conversation(
            record.tenant,
            record.conversation,
            lambda c: msgspec.structs.replace(c, items=[*c.items, *items]),
        )
