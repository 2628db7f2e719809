"""`item_reference` items resolved to the tenant's stored items, in place and in order.

The AI SDK and reasoning-model tool loops send earlier items back as
`{"type": "item_reference", "id": …}`. A reference names an item of this tenant: one of the
request's own history (previous response or conversation), else an item found through the
store's item index (an input or output item of a stored response, or a conversation item).
Another tenant's id is simply not found: 404 naming the input position.
"""

from __future__ import annotations

from llmq.api.errors import ApiError
from llmq.api.responses.conversation_store import ConversationStore
from llmq.schemas.responses import Item

REFERENCE = "item_reference"


def _not_found(item_id: object, param: str) -> ApiError:
    return ApiError(404, f"Item with id '{item_id}' not found.", "item_not_found", param=param)


async def resolve(
    store: ConversationStore, tenant: str, items: list[Item], history: list[Item]
) -> list[Item]:
    """`items` with every reference replaced by the item it names."""
    if not any(item.get("type") == REFERENCE for item in items):
        return items
    known = {item["id"]: item for item in history if isinstance(item.get("id"), str)}
    homes: dict[str, dict[str, Item]] = {}
    out: list[Item] = []
    for i, item in enumerate(items):
        if item.get("type") != REFERENCE:
            out.append(item)
            known.setdefault(item.get("id", ""), item)
            continue
        ref, param = item.get("id"), f"input[{i}]"
        if not isinstance(ref, str):
            raise ApiError(400, "an item reference needs an `id`", "invalid_request", param=param)
        found = known.get(ref)
        if found is None:
            home = await store.item_home(tenant, ref)
            if home is not None and home not in homes:
                homes[home] = await _items_of(store, tenant, home)
            found = homes.get(home or "", {}).get(ref)
        if found is None:
            raise _not_found(ref, param)
        out.append(found)
    return out


async def _items_of(store: ConversationStore, tenant: str, home: str) -> dict[str, Item]:
    """The items of one stored response (`r:<hex>`) or conversation (`c:<hex>`) by id."""
    kind, _, hex_id = home.partition(":")
    items: list[Item] = []
    if kind == "r":
        found = await store.get_response(tenant, hex_id)
        if found is not None:
            items = [*found.context, *found.response.get("output", [])]
    elif kind == "c":
        conv = await store.get_conversation(tenant, hex_id)
        items = list(conv.items) if conv is not None else []
    return {item["id"]: item for item in items if isinstance(item.get("id"), str)}
