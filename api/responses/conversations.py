"""Serving `/v1/conversations`: create (with items and metadata), get, update metadata,
delete; and the conversation's items: list (paged, in order), add, get, delete.

A conversation and its items are one record of the tenant (`dispatcher/conversation_store`);
another tenant's ids are not found. Responses created with `conversation` append to it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.errors import MaxPayloadError

from llmq.api.errors import ApiError
from llmq.api.listing import not_found
from llmq.api.responses.conversation_store import ConversationStore
from llmq.api.responses.items import as_items, list_body, page
from llmq.api.responses.records import public_hex
from llmq.api.responses.stored_bytes import MeteredStore
from llmq.dispatcher.batch.records import time_hex
from llmq.schemas.responses import CONVERSATION_PREFIX, Conversation, Item

_encoder = msgspec.json.Encoder()

MAX_NEW_ITEMS = 20
"""Items one create or add call may carry (as OpenAI)."""

Accepted = Callable[[], Awaitable[None]]
"""Awaited once a write passed every check, just before it is stored: it counts the write
against the RPM (and may still refuse it with a 429), so a refused write uses no quota."""


async def _nothing() -> None:
    return None


class CreateConversation(msgspec.Struct):
    items: list[Item] | None = None
    metadata: dict[str, str] | None = None


class UpdateConversation(msgspec.Struct):
    metadata: dict[str, str]


class AddItems(msgspec.Struct):
    items: list[Item]


def view(conv: Conversation) -> dict[str, Any]:
    return {
        "id": CONVERSATION_PREFIX + conv.id,
        "object": "conversation",
        "created_at": conv.created_at,
        "metadata": conv.metadata,
    }


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ApiError(400, f"invalid body: {exc}", "invalid_request") from None


def _metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = metadata or {}
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise ApiError(
            400,
            "metadata: at most 16 keys of 64 and values of 512 characters",
            "invalid_metadata",
            param="metadata",
        )
    return metadata


def _full(public_id: str) -> ApiError:
    return ApiError(
        413,
        f"conversation {public_id} cannot hold more items (the largest NATS message)",
        "conversation_too_large",
    )


def _new_items(raw: list[Item] | None) -> list[Item]:
    if raw is not None and len(raw) > MAX_NEW_ITEMS:
        raise ApiError(
            400, f"at most {MAX_NEW_ITEMS} items at a time", "invalid_request", param="items"
        )
    return as_items(raw, "items")


class ConversationsServing:
    def __init__(self, store: ConversationStore, max_record: Callable[[], int]) -> None:
        """`max_record`: the largest record the bucket takes (NATS `max_payload`), so a
        conversation that cannot grow is refused before the write is counted."""
        self.store = store
        self.max_record = max_record

    def _check_fits(self, public_id: str, record: Conversation) -> None:
        if len(_encoder.encode(record)) > self.max_record():
            raise _full(public_id)

    async def _check_room(self, tenant: str, record: object) -> None:
        """413 when `record`'s bytes do not fit in the tenant's storage quota."""
        if isinstance(self.store, MeteredStore):
            await self.store.check_room(tenant, len(_encoder.encode(record)))

    async def _get(self, tenant: str, public_id: str) -> Conversation:
        hex_id = public_hex(public_id, CONVERSATION_PREFIX)
        found = await self.store.get_conversation(tenant, hex_id) if hex_id else None
        if found is None:
            raise not_found("conversation", public_id)
        return found

    async def create(
        self, tenant: str, body: bytes, accepted: Accepted = _nothing
    ) -> dict[str, Any]:
        req: CreateConversation = _decode(body, CreateConversation)
        conv = Conversation(
            id=time_hex(),
            tenant=tenant,
            created_at=int(time.time()),
            metadata=_metadata(req.metadata),
            items=_new_items(req.items),
        )
        await self._check_room(tenant, conv)
        self._check_fits(CONVERSATION_PREFIX + conv.id, conv)
        await accepted()
        try:
            await self.store.create_conversation(conv)
        except MaxPayloadError:
            raise _full(CONVERSATION_PREFIX + conv.id) from None
        await self._index(tenant, conv.id, conv.items)
        return view(conv)

    async def _index(self, tenant: str, hex_id: str, items: list[Item]) -> None:
        """These items may be referenced (`item_reference`) from now on."""
        await self.store.index_items(tenant, [i["id"] for i in items], f"c:{hex_id}")

    async def get(self, tenant: str, public_id: str) -> dict[str, Any]:
        return view(await self._get(tenant, public_id))

    async def update(
        self, tenant: str, public_id: str, body: bytes, accepted: Accepted = _nothing
    ) -> dict[str, Any]:
        req: UpdateConversation = _decode(body, UpdateConversation)
        metadata = _metadata(req.metadata)
        conv = await self._get(tenant, public_id)
        self._check_fits(public_id, msgspec.structs.replace(conv, metadata=metadata))
        await accepted()
        updated = await self.store.update_conversation(
            tenant, conv.id, lambda c: msgspec.structs.replace(c, metadata=metadata)
        )
        if updated is None:
            raise not_found("conversation", public_id)
        return view(updated)

    async def delete(self, tenant: str, public_id: str) -> dict[str, Any]:
        conv = await self._get(tenant, public_id)
        await self.store.delete_conversation(tenant, conv.id)
        return {"id": public_id, "object": "conversation.deleted", "deleted": True}

    async def list_items(
        self, tenant: str, public_id: str, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        conv = await self._get(tenant, public_id)
        data, has_more = page(conv.items, limit, order, after)
        return list_body(data, has_more)

    async def add_items(
        self, tenant: str, public_id: str, body: bytes, accepted: Accepted = _nothing
    ) -> dict[str, Any]:
        req: AddItems = _decode(body, AddItems)
        items = _new_items(req.items)
        conv = await self._get(tenant, public_id)
        await self._check_room(tenant, items)
        self._check_fits(public_id, msgspec.structs.replace(conv, items=[*conv.items, *items]))
        await accepted()
        try:
            updated = await self.store.update_conversation(
                tenant, conv.id, lambda c: msgspec.structs.replace(c, items=[*c.items, *items])
            )
        except MaxPayloadError:
            raise _full(public_id) from None
        if updated is None:
            raise not_found("conversation", public_id)
        await self._index(tenant, conv.id, items)
        return list_body(items, False)

    async def get_item(self, tenant: str, public_id: str, item_id: str) -> Item:
        conv = await self._get(tenant, public_id)
        for item in conv.items:
            if item.get("id") == item_id:
                return item
        raise not_found("item", item_id)

    async def delete_item(self, tenant: str, public_id: str, item_id: str) -> dict[str, Any]:
        conv = await self._get(tenant, public_id)
        if not any(item.get("id") == item_id for item in conv.items):
            raise not_found("item", item_id)
        updated = await self.store.update_conversation(
            tenant,
            conv.id,
            lambda c: msgspec.structs.replace(
                c, items=[i for i in c.items if i.get("id") != item_id]
            ),
        )
        return view(updated or conv)
