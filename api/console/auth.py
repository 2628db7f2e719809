"""Logging in to the console and the guards of its JSON endpoints.

The admin token logs in as admin; a tenant's API key logs in to that tenant's read-only
view. Either is posted once as JSON (never in a URL) and exchanged for a session cookie.
"""

from __future__ import annotations

import hmac
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.console.session import (
    Session,
    check_csrf,
    clear_cookie,
    current,
    new_session,
    set_cookie,
)
from llmq.api.errors import ApiError
from llmq.api.routes.admin import guarded, json_body, json_reply
from llmq.api.tenancy import TenantStore
from llmq.api.tenancy.errors import backend_guard
from llmq.api.tenancy.store import hash_key
from llmq.schemas import names

router = APIRouter(prefix="/ui/api")


def _check_origin(request: Request) -> None:
    """A login may only come from the console's own page (a login CSRF would sign the
    victim in as the attacker)."""
    origin = request.headers.get("origin")
    if origin and origin.rstrip("/") != str(request.base_url).rstrip("/"):
        raise ApiError(403, "cross-origin login refused", "csrf_failed")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(415, "send the login as application/json", "invalid_request")


async def session_of(request: Request, role: str | None = None) -> Session:
    """The caller's live session (of `role` when given), CSRF checked; else 401/403. A
    tenant session ends as soon as its key is revoked or the tenant deleted."""
    session = current(request)
    if session is None:
        raise ApiError(401, "log in to the console first", "not_logged_in")
    if role is not None and session.role != role:
        raise ApiError(403, "this page is for administrators", "forbidden")
    check_csrf(request, session)
    if await guarded(_ended(request, session)):
        raise ApiError(401, "this session was logged out", "not_logged_in")
    if session.role == "tenant":
        await _check_tenant(request, session)
    return session


async def _ended(request: Request, session: Session) -> bool:
    redis = request.app.state.runtime.redis
    with backend_guard():
        return bool(await redis.exists(names.CONSOLE_ENDED_PREFIX + session.id))


async def _check_tenant(request: Request, session: Session) -> None:
    """A tenant session ends with its key (revoked or expired) and its tenant (suspended
    or deleted)."""
    store: TenantStore = request.app.state.store
    tenant = await guarded(store.get(session.tenant))
    if tenant is None or tenant.status != "active":
        raise ApiError(401, "this tenant is suspended or gone", "not_logged_in")
    keys = await guarded(store.list_keys(session.tenant))
    key = next((k for k in keys if k.id == session.key_id), None)
    if key is None or key.expired(time.time()):
        raise ApiError(401, "the key of this session was revoked or expired", "not_logged_in")


async def admin(request: Request) -> Session:
    return await session_of(request, "admin")


@router.post("/login")
async def login(request: Request) -> Response:
    _check_origin(request)
    settings = request.app.state.settings
    token = str((await json_body(request)).get("token", "")).strip()
    admin_token = settings.api.admin_token
    session: Session | None = None
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        session = new_session(settings, "admin")
    elif token:
        store: TenantStore = request.app.state.store
        tenant = await guarded(store.resolve_key(token))
        if tenant is not None:
            digest = hash_key(token)
            keys = await guarded(store.list_keys(tenant.name))
            key_id = next((k.id for k in keys if hmac.compare_digest(k.sha256, digest)), "")
            if key_id:
                session = new_session(settings, "tenant", tenant.name, key_id)
    if session is None:
        raise ApiError(401, "wrong admin token or API key", "invalid_credentials")
    response = json_reply(_view(session))
    set_cookie(response, request, settings, session)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = current(request)
    if session is not None:
        check_csrf(request, session)
        await guarded(_end(request, session))
    response = json_reply({"logged_in": False})
    clear_cookie(response, request)
    return response


async def _end(request: Request, session: Session) -> None:
    """Remember the logout until the session would have expired: a copy of the cookie is
    refused from now on, on every replica."""
    left_ms = int((session.expires - time.time()) * 1000)
    if left_ms > 0:
        with backend_guard():
            await request.app.state.runtime.redis.set(
                names.CONSOLE_ENDED_PREFIX + session.id, b"1", px=left_ms
            )


@router.get("/session")
async def show_session(request: Request) -> Response:
    """Who is logged in and the CSRF token the page must send back (readable by the page's
    own script only: same-origin JSON)."""
    session = current(request)
    if session is None:
        return json_reply({"logged_in": False})
    return json_reply(_view(await session_of(request)))


def _view(session: Session) -> dict[str, object]:
    return {
        "logged_in": True,
        "role": session.role,
        "tenant": session.tenant,
        "csrf": session.csrf,
        "expires": session.expires,
    }
