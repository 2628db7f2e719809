"""The admin API under /admin: tenants, API keys, usage, ledger and the price table.

Guarded by `LLMQ_ADMIN_TOKEN` (bearer, compared in constant time) or an admin session of
the console (cookie + CSRF header, see api/console/session.py); with no token set the whole
surface answers 403. The same operations exist in the CLI (`llmq tenants|keys|usage|
prices`), which talks to Redis directly. The app leaves these routes out of the public
`/openapi.json`; they are described at `/admin/openapi.json`, behind the same token.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import Response

from llmq.api.console.session import admin_session
from llmq.api.errors import ApiError
from llmq.api.openapi_bodies import Bodies, with_bodies
from llmq.api.tenancy import (
    Price,
    QuotaBackendDown,
    Tenant,
    TenantExists,
    TenantStore,
    UnknownTenant,
    UsageReader,
)
from llmq.api.tenancy.models import KeyInput, key_input

_encoder = msgspec.json.Encoder()
log = logging.getLogger(__name__)


def require_admin(request: Request) -> None:
    token = request.app.state.settings.api.admin_token
    if not token:
        raise ApiError(403, "the admin API is disabled (set LLMQ_ADMIN_TOKEN)", "admin_disabled")
    if "authorization" not in request.headers and admin_session(request):
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise ApiError(401, "admin token required", "invalid_admin_token")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


def json_reply(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


def _store(request: Request) -> TenantStore:
    store: TenantStore = request.app.state.store
    return store


async def json_body(request: Request) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(await request.body() or b"{}")
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}", "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "expected a JSON object", "invalid_request")
    return data


async def guarded(coro: Any) -> Any:
    """Map the tenancy layer's exceptions onto the one error format."""
    try:
        return await coro
    except QuotaBackendDown:
        raise ApiError(503, "the tenant store is unavailable", "tenant_store_down") from None
    except UnknownTenant as exc:
        raise ApiError(404, f"tenant `{exc}` does not exist", "tenant_not_found") from None
    except TenantExists as exc:
        raise ApiError(409, f"tenant `{exc}` already exists", "tenant_exists") from None
    except (msgspec.ValidationError, ValueError) as exc:
        raise ApiError(400, str(exc), "invalid_request") from None


async def _tenant_or_404(store: TenantStore, name: str) -> Tenant:
    tenant = await guarded(store.get(name))
    if tenant is None:
        raise ApiError(404, f"tenant `{name}` does not exist", "tenant_not_found")
    return tenant


# --- tenants -----------------------------------------------------------------------------


@router.get("/tenants")
async def list_tenants(request: Request) -> Response:
    return json_reply({"object": "list", "data": await guarded(_store(request).list_tenants())})


@router.post("/tenants")
async def create_tenant(request: Request) -> Response:
    data = await json_body(request)
    tenant = await guarded(_store(request).create(_guarded_convert(data, Tenant)))
    return json_reply(tenant, 201)


def _guarded_call(make: Any) -> Any:
    try:
        return make()
    except (msgspec.ValidationError, ValueError) as exc:
        raise ApiError(400, str(exc), "invalid_request") from None


def _guarded_convert(data: dict[str, Any], kind: type[Any]) -> Any:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, str(exc), "invalid_request") from None


@router.get("/tenants/{name}")
async def show_tenant(name: str, request: Request) -> Response:
    return json_reply(await _tenant_or_404(_store(request), name))


async def _changed(request: Request, name: str) -> None:
    """Every api drops its cached records of the tenant (`api/auth_changes.py`)."""
    await request.app.state.auth_changes.changed(name)


@router.patch("/tenants/{name}")
async def update_tenant(name: str, request: Request) -> Response:
    updated = await guarded(_store(request).update(name, await json_body(request)))
    await _changed(request, name)
    return json_reply(updated)


@router.post("/tenants/{name}/suspend")
async def suspend_tenant(name: str, request: Request) -> Response:
    suspended = await guarded(_store(request).suspend(name))
    await _changed(request, name)
    return json_reply(suspended)


@router.post("/tenants/{name}/resume")
async def resume_tenant(name: str, request: Request) -> Response:
    return json_reply(await guarded(_store(request).resume(name)))


@router.delete("/tenants/{name}")
async def delete_tenant(name: str, request: Request) -> Response:
    """Delete the tenant and purge its files, jobs and batches (docs/tenants.md)."""
    if not await guarded(_store(request).delete(name)):
        raise ApiError(404, f"tenant `{name}` does not exist", "tenant_not_found")
    await _changed(request, name)
    purged: dict[str, int] = {}
    try:
        purged = await request.app.state.batches.purge_deleted()
    except Exception as exc:  # unreachable anyway (ids are never reused); the sweeper retries
        log.warning("tenant %s deleted; purging its data failed: %s", name, exc)
    return json_reply({"id": name, "object": "tenant", "deleted": True, "purged": purged})


# --- keys --------------------------------------------------------------------------------


@router.post("/tenants/{name}/keys")
async def create_key(name: str, request: Request) -> Response:
    """Body: `label`, `owner`, `models`, `rpm`, `tpm`, `max_concurrent`, `daily_tokens`,
    `monthly_tokens`, `spend_budget_usd` (the key's own limits, inside the tenant's),
    `expires_at` (unix s) or `expires_in` (`30d`, `12h`, seconds); all optional."""
    store = _store(request)
    await _tenant_or_404(store, name)
    data = await json_body(request)
    settings = _guarded_call(lambda: key_input(data, time.time()))
    plaintext, record = await guarded(store.create_key(name, settings=settings))
    return json_reply({**msgspec.to_builtins(record), "key": plaintext}, 201)


@router.get("/tenants/{name}/keys")
async def list_keys(name: str, request: Request) -> Response:
    store = _store(request)
    await _tenant_or_404(store, name)
    return json_reply({"object": "list", "data": await guarded(store.list_keys(name))})


@router.delete("/tenants/{name}/keys/{key_id}")
async def revoke_key(name: str, key_id: str, request: Request) -> Response:
    if not await guarded(_store(request).revoke_key(name, key_id)):
        raise ApiError(404, f"key `{key_id}` of tenant `{name}` does not exist", "key_not_found")
    await _changed(request, name)
    return json_reply({"id": key_id, "object": "api_key", "deleted": True})


# --- usage and ledger --------------------------------------------------------------------


@router.get("/tenants/{name}/usage")
async def usage(name: str, request: Request, days: int = 7, by: str = "model") -> Response:
    """`by`: `model` (default), `key` (rows per API key id) or `user` (per end user, the
    requests' `user` field; a row's `model` holds the key id or the user)."""
    if by not in ("model", "key", "user"):
        raise ApiError(400, "`by` must be model, key or user", "invalid_request", param="by")
    await _tenant_or_404(_store(request), name)
    reader: UsageReader = request.app.state.usage
    rows = await guarded(reader.usage(name, days=max(1, min(days, 400)), by=by))  # type: ignore[arg-type]
    return json_reply({"object": "list", "tenant": name, "by": by, "data": rows})


@router.get("/ledger")
async def ledger(request: Request, tenant: str | None = None, count: int = 100) -> Response:
    reader: UsageReader = request.app.state.usage
    entries = await guarded(reader.ledger(tenant, count=max(1, min(count, 10_000))))
    return json_reply({"object": "list", "data": entries})


# --- prices ------------------------------------------------------------------------------


@router.get("/prices")
async def list_prices(request: Request) -> Response:
    return json_reply({"object": "list", "data": await guarded(_store(request).list_prices())})


@router.put("/prices/{model:path}")
async def set_price(model: str, request: Request) -> Response:
    price = _guarded_convert(await json_body(request), Price)
    return json_reply(
        {
            "model": model,
            **msgspec.to_builtins(await guarded(_store(request).set_price(model, price))),
        }
    )


@router.delete("/prices/{model:path}")
async def delete_price(model: str, request: Request) -> Response:
    if not await guarded(_store(request).delete_price(model)):
        raise ApiError(404, f"no price for model `{model}`", "price_not_found")
    return json_reply({"model": model, "deleted": True})


# --- its own description -----------------------------------------------------------------

BODIES: Bodies = {
    ("/admin/tenants", "post"): Tenant,
    ("/admin/tenants/{name}", "patch"): {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },  # some of a tenant's fields
    ("/admin/tenants/{name}/keys", "post"): KeyInput,
    ("/admin/prices/{model}", "put"): Price,
}
"""What the admin document says these routes read (`api/openapi_bodies.py`)."""


@router.get("/openapi.json", include_in_schema=False)
async def admin_openapi(request: Request) -> Response:
    """The admin API's OpenAPI document, apart from the public one."""
    document = get_openapi(
        title="llmq admin API",
        version=request.app.version,
        description="Tenants, API keys, usage, the ledger and the price table. Every "
        "route needs `Authorization: Bearer $LLMQ_ADMIN_TOKEN`.",
        routes=router.routes,
    )
    document = with_bodies(document, BODIES)
    document.setdefault("components", {})["securitySchemes"] = {
        "adminToken": {"type": "http", "scheme": "bearer"}
    }
    document["security"] = [{"adminToken": []}]
    return json_reply(document)
