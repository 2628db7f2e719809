"""Conversations: `/v1/conversations` and `/v1/conversations/{id}/items`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.openapi_bodies import Bodies
from llmq.api.protocol import read_body
from llmq.api.responses.conversations import (
    Accepted,
    AddItems,
    ConversationsServing,
    CreateConversation,
    UpdateConversation,
)
from llmq.api.responses.routes import scope_of
from llmq.api.responses.routes import serving as responses
from llmq.api.routes.common import count, json_response, tenant_of

router = APIRouter(prefix="/v1")
BODIES: Bodies = {
    ("/v1/conversations", "post"): CreateConversation,
    ("/v1/conversations/{conversation_id}", "post"): UpdateConversation,
    ("/v1/conversations/{conversation_id}/items", "post"): AddItems,
}


def serving(request: Request) -> ConversationsServing:
    found: ConversationsServing = request.app.state.conversations
    return found


async def _body(request: Request) -> bytes:
    return await read_body(request, request.app.state.settings.api.max_body_bytes)


async def _writer(request: Request) -> tuple[str, Accepted]:
    """The scope of a caller about to write, and what counts the write against its RPM:
    awaited once the write is accepted, just before it is stored, so a refused one (bad
    body, too many items, unknown conversation, no storage room) uses no quota."""
    tenant = await tenant_of(request)
    scope = await responses(request).scopes.of(tenant)
    return scope, lambda: count(request, tenant)


@router.post("/conversations")
async def create(request: Request) -> Response:
    scope, accepted = await _writer(request)
    body = await _body(request)
    return json_response(await serving(request).create(scope, body, accepted))


@router.get("/conversations/{conversation_id}")
async def get(request: Request, conversation_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).get(scope, conversation_id))


@router.post("/conversations/{conversation_id}")
async def update(request: Request, conversation_id: str) -> Response:
    scope, accepted = await _writer(request)
    body = await _body(request)
    found = await serving(request).update(scope, conversation_id, body, accepted)
    return json_response(found)


@router.delete("/conversations/{conversation_id}")
async def delete(request: Request, conversation_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).delete(scope, conversation_id))


@router.get("/conversations/{conversation_id}/items")
async def list_items(
    request: Request,
    conversation_id: str,
    limit: int = 20,
    order: str = "desc",
    after: str | None = None,
) -> Response:
    scope = await scope_of(request)
    found = await serving(request).list_items(scope, conversation_id, limit, order, after)
    return json_response(found)


@router.post("/conversations/{conversation_id}/items")
async def add_items(request: Request, conversation_id: str) -> Response:
    scope, accepted = await _writer(request)
    body = await _body(request)
    found = await serving(request).add_items(scope, conversation_id, body, accepted)
    return json_response(found)


@router.get("/conversations/{conversation_id}/items/{item_id}")
async def get_item(request: Request, conversation_id: str, item_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).get_item(scope, conversation_id, item_id))


@router.delete("/conversations/{conversation_id}/items/{item_id}")
async def delete_item(request: Request, conversation_id: str, item_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).delete_item(scope, conversation_id, item_id))
