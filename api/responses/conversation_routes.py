"""Conversations: `/v1/conversations` and `/v1/conversations/{id}/items`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.openapi_bodies import Bodies
from llmq.api.protocol import read_body
from llmq.api.responses.conversations import (
    AddItems,
    ConversationsServing,
    CreateConversation,
    UpdateConversation,
)
from llmq.api.responses.routes import scope_of
from llmq.api.routes.common import counted, json_response

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


async def _writer_scope(request: Request) -> str:
    """The scope of a caller about to write (counted against its RPM, as every call)."""
    await counted(request)
    return await scope_of(request)


@router.post("/conversations")
async def create(request: Request) -> Response:
    scope = await _writer_scope(request)
    return json_response(await serving(request).create(scope, await _body(request)))


@router.get("/conversations/{conversation_id}")
async def get(request: Request, conversation_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).get(scope, conversation_id))


@router.post("/conversations/{conversation_id}")
async def update(request: Request, conversation_id: str) -> Response:
    scope = await _writer_scope(request)
    body = await _body(request)
    return json_response(await serving(request).update(scope, conversation_id, body))


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
    scope = await _writer_scope(request)
    body = await _body(request)
    return json_response(await serving(request).add_items(scope, conversation_id, body))


@router.get("/conversations/{conversation_id}/items/{item_id}")
async def get_item(request: Request, conversation_id: str, item_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).get_item(scope, conversation_id, item_id))


@router.delete("/conversations/{conversation_id}/items/{item_id}")
async def delete_item(request: Request, conversation_id: str, item_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).delete_item(scope, conversation_id, item_id))
