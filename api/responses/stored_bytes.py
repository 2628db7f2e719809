"""Stored responses and conversations count toward a tenant's `storage_bytes`, with its files.

Their sizes are kept in Redis (`api/tenancy/stored_bytes.py`). `MeteredStore`
is the conversation store with every write and delete recorded; a write that adds bytes
(a new conversation, new items) is refused with a 413 first when it does not fit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.js.kv import KeyValue

from llmq.api.errors import ApiError
from llmq.api.responses.conversation_store import ConversationStore
from llmq.api.tenancy import QuotaBackendDown
from llmq.api.tenancy.stored_bytes import StoredBytes
from llmq.schemas.responses import Conversation, StoredResponse

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()

Room = Callable[[str], Awaitable[int | None]]
"""Bytes a tenant scope's quota leaves after its files (None: no quota)."""


class MeteredStore(ConversationStore):
    def __init__(
        self, responses: KeyValue, conversations: KeyValue, stored: StoredBytes, room: Room
    ) -> None:
        super().__init__(responses, conversations)
        self.stored = stored
        self.room = room

    async def check_room(self, scope: str, more: int) -> None:
        """413 unless `more` bytes fit in the scope's storage quota; 503 when Redis is away."""
        if not scope:
            return
        try:
            room = await self.room(scope)
            if room is None:
                return
            left = room - await self.stored.total(scope)
        except QuotaBackendDown:
            raise ApiError(503, "the quota store is unavailable", "quota_store_down") from None
        if more > left:
            raise ApiError(
                413,
                f"this does not fit in the tenant's storage quota ({max(0, left)} bytes "
                "left); delete conversations, responses or files, or ask for more",
                "storage_quota_exceeded",
            )

    async def _count(self, scope: str, record: str, size: int) -> None:
        """Record a size after the write happened (a failure is logged: the write stands)."""
        if not scope:
            return
        try:
            await self.stored.record(scope, record, size)
        except Exception as exc:
            log.warning("stored bytes of %s not counted: %s", record, type(exc).__name__)

    async def purge(self, scope: str) -> dict[str, int]:
        counts = await super().purge(scope)
        await self.stored.forget(scope)
        return counts

    async def put_response(self, record: StoredResponse) -> None:
        await super().put_response(record)
        await self._count(record.tenant, f"r:{record.id}", len(_encoder.encode(record)))

    async def update_response(
        self, tenant: str, hex_id: str, change: Callable[[StoredResponse], StoredResponse | None]
    ) -> bool:
        sizes: list[int] = []

        def measured(r: StoredResponse) -> StoredResponse | None:
            new = change(r)
            sizes.append(len(_encoder.encode(new)) if new is not None else 0)
            return new

        changed = await super().update_response(tenant, hex_id, measured)
        if changed and sizes[-1]:
            await self._count(tenant, f"r:{hex_id}", sizes[-1])
        return changed

    async def delete_response(self, tenant: str, hex_id: str) -> bool:
        deleted = await super().delete_response(tenant, hex_id)
        await self._count(tenant, f"r:{hex_id}", 0)
        return deleted

    async def create_conversation(self, record: Conversation) -> None:
        await super().create_conversation(record)
        await self._count(record.tenant, f"c:{record.id}", len(_encoder.encode(record)))

    async def update_conversation(
        self, tenant: str, hex_id: str, change: Callable[[Conversation], Conversation | None]
    ) -> Conversation | None:
        updated = await super().update_conversation(tenant, hex_id, change)
        if updated is not None:
            await self._count(tenant, f"c:{hex_id}", len(_encoder.encode(updated)))
        return updated

    async def delete_conversation(self, tenant: str, hex_id: str) -> bool:
        deleted = await super().delete_conversation(tenant, hex_id)
        await self._count(tenant, f"c:{hex_id}", 0)
        return deleted
