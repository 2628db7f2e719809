"""The model catalog: /v1/models and /v1/models/{id} (which need a key, like every /v1
route, and show only what the caller's tenant may use)."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.auth import Authenticator, Caller
from llmq.api.errors import ApiError
from llmq.schemas.openai import ModelCard, ModelList
from llmq.schemas.registry import WorkerInfo

router = APIRouter(prefix="/v1")
_encoder = msgspec.json.Encoder()


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.serving.auth
    return auth


def _card(
    request: Request, caller: Caller, live: dict[str, list[WorkerInfo]], name: str
) -> ModelCard | None:
    """`name` as the caller sees it: a model served by a live worker, or an alias of one,
    and only if what it resolves to is a model the caller's tenant may use."""
    registry = request.app.state.runtime.registry
    model = request.app.state.models.resolve(name)
    workers = live.get(model)
    if not workers or not caller.may_use(model):
        return None
    info = registry.model_info(model)
    created = int(info.first_seen) if info else 0
    return ModelCard(id=name, created=created, owned_by=workers[0].backend)


@router.get("/models")
async def list_models(request: Request) -> Response:
    """The models the caller may use now: live ones, and the aliases that point to them."""
    caller = await _auth(request).caller(request)
    registry = request.app.state.runtime.registry
    live = registry.live_models()
    await registry.load_catalog(live)
    names = sorted(set(live) | set(request.app.state.models.aliases))
    cards = [card for name in names if (card := _card(request, caller, live, name))]
    return Response(_encoder.encode(ModelList(data=cards)), media_type="application/json")


@router.get("/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    """One model; 404 alike for a model that does not exist and one the caller may not
    use, so a key cannot probe what other tenants run."""
    caller = await _auth(request).caller(request)
    registry = request.app.state.runtime.registry
    live = registry.live_models()
    await registry.load_catalog((request.app.state.models.resolve(model_id),))
    card = _card(request, caller, live, model_id)
    if card is None:
        raise ApiError(
            404,
            f"The model `{model_id}` does not exist or you do not have access to it.",
            "model_not_found",
            type="invalid_request_error",
        )
    return Response(_encoder.encode(card), media_type="application/json")
