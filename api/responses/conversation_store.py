"""Stored responses and conversations (Responses API) in JetStream KV, one namespace per
tenant, so another tenant's id is simply not found.

Every key starts with `namespace(scope)`: the one place that decides how a tenant names
its durable data. The api passes the tenant's scope (`<name>~<immutable id>`,
`api.tenant_scope`), as for files, jobs and batches, so a tenant deleted and created again
under its old name starts empty, and `purge` frees a deleted tenant's records. Changes of
one record are compare-and-set (`kv.mutate`), so api replicas may update one record at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from llmq.dispatcher import kv as kvs
from llmq.schemas import names
from llmq.schemas.responses import (
    Conversation,
    StoredResponse,
    conversation_decoder,
    stored_response_decoder,
)

_encoder = msgspec.json.Encoder()
_INDEXABLE = re.compile(r"[A-Za-z0-9_-]{1,200}")
ITEM_KEY = "item-"
"""Item index keys (`<namespace>.item-<item id>`) share the responses bucket; response keys
are 32 hex digits, so the two never meet."""


def namespace(scope: str) -> str:
    """The key prefix of a tenant scope's stored responses and conversations."""
    return names.tenant_token(scope)


class ConversationStore:
    def __init__(self, responses: KeyValue, conversations: KeyValue) -> None:
        self.responses = responses
        self.conversations = conversations

    @staticmethod
    def key(tenant: str, hex_id: str) -> str:
        return f"{namespace(tenant)}.{hex_id}"

    async def purge(self, scope: str) -> dict[str, int]:
        """Delete every stored response and conversation of a deleted tenant's scope; how
        many of each (kinds with none left out)."""
        counts = {}
        pattern = f"{namespace(scope)}.*"
        for kind, bucket in (("responses", self.responses), ("conversations", self.conversations)):
            keys = await kvs.scan(bucket, pattern, meta_only=True)
            for key in keys:
                await bucket.purge(key)
            records = [k for k in keys if not k.rpartition(".")[2].startswith(ITEM_KEY)]
            if records:
                counts[kind] = len(records)
        return counts

    # --- responses -----------------------------------------------------------------------

    async def put_response(self, record: StoredResponse) -> None:
        await self.responses.put(self.key(record.tenant, record.id), _encoder.encode(record))

    async def get_response(self, tenant: str, hex_id: str) -> StoredResponse | None:
        found = await kvs.read(self.responses, self.key(tenant, hex_id), stored_response_decoder)
        return found[0] if found else None

    async def update_response(
        self, tenant: str, hex_id: str, change: Callable[[StoredResponse], StoredResponse | None]
    ) -> bool:
        """Compare-and-set `change` on the record; True when this call changed it."""
        out = await kvs.mutate(
            self.responses, self.key(tenant, hex_id), stored_response_decoder, change
        )
        return bool(out and out[2])

    async def delete_response(self, tenant: str, hex_id: str) -> bool:
        return await _delete(self.responses, self.key(tenant, hex_id))

    # --- the item index: where a stored item lives, for `item_reference` ---------------

    async def index_items(self, tenant: str, item_ids: list[str], home: str) -> None:
        """Remember that these items live in `home` (`r:<hex>` a stored response, `c:<hex>`
        a conversation); ids that cannot be a key are not indexed (never referenced)."""
        keys = [f"{namespace(tenant)}.{ITEM_KEY}{i}" for i in item_ids if _INDEXABLE.fullmatch(i)]
        value = home.encode()
        await asyncio.gather(*(self.responses.put(key, value) for key in dict.fromkeys(keys)))

    async def item_home(self, tenant: str, item_id: str) -> str | None:
        """Where the item `item_id` of this tenant lives, or None."""
        if not _INDEXABLE.fullmatch(item_id):
            return None
        raw = await kvs.read_raw(self.responses, f"{namespace(tenant)}.{ITEM_KEY}{item_id}")
        return raw.decode() if raw else None

    # --- conversations -------------------------------------------------------------------

    async def create_conversation(self, record: Conversation) -> None:
        await kvs.create_once(
            self.conversations, self.key(record.tenant, record.id), _encoder.encode(record)
        )

    async def get_conversation(self, tenant: str, hex_id: str) -> Conversation | None:
        found = await kvs.read(self.conversations, self.key(tenant, hex_id), conversation_decoder)
        return found[0] if found else None

    async def update_conversation(
        self, tenant: str, hex_id: str, change: Callable[[Conversation], Conversation | None]
    ) -> Conversation | None:
        out = await kvs.mutate(
            self.conversations, self.key(tenant, hex_id), conversation_decoder, change
        )
        return out[0] if out else None

    async def delete_conversation(self, tenant: str, hex_id: str) -> bool:
        return await _delete(self.conversations, self.key(tenant, hex_id))


async def _delete(bucket: KeyValue, key: str) -> bool:
    """Delete `key`; False when it did not exist (or was already deleted)."""
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return False
    if entry.value is None:
        return False
    await bucket.delete(key)
    return True
