"""Console sessions: a signed cookie (HMAC-SHA256), HttpOnly, SameSite=Strict, Secure over TLS.

Stateless, so any api replica accepts a session another one issued (they share the key:
`LLMQ_CONSOLE_SECRET`, or one derived from `LLMQ_ADMIN_TOKEN`, so rotating the admin token
ends every session). The cookie names the role (`admin`, or `tenant` with the key id that
logged in) and carries the CSRF token that every state-changing request must echo in the
`X-CSRF-Token` header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from llmq.api.errors import ApiError
from llmq.schemas.settings import Settings

COOKIE = "llmq_console"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PROCESS_SECRET = secrets.token_bytes(32)
"""Signs sessions when neither a console secret nor an admin token is set (one replica)."""

Role = Literal["admin", "tenant"]


class Session(msgspec.Struct, kw_only=True):
    role: Role
    csrf: str
    expires: float
    tenant: str = ""
    key_id: str = ""
    """The API key a tenant logged in with; revoking it ends the session."""

    @property
    def id(self) -> str:
        """Names the session where its logout is remembered (not the CSRF token itself)."""
        return hashlib.sha256(self.csrf.encode()).hexdigest()[:32]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Session)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(settings: Settings) -> bytes:
    secret = settings.console.console_secret or settings.api.admin_token
    if not secret:
        return _PROCESS_SECRET
    return hmac.new(b"llmq-console-session", secret.encode(), hashlib.sha256).digest()


def new_session(settings: Settings, role: Role, tenant: str = "", key_id: str = "") -> Session:
    return Session(
        role=role,
        csrf=secrets.token_urlsafe(24),
        expires=time.time() + settings.console.console_session_hours * 3600,
        tenant=tenant,
        key_id=key_id,
    )


def encode(settings: Settings, session: Session) -> str:
    payload = _encoder.encode(session)
    mac = hmac.new(signing_key(settings), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def decode(settings: Settings, value: str) -> Session | None:
    """The session a cookie value holds, or None if forged, malformed or expired."""
    body, _, mac = value.partition(".")
    try:
        payload, given = _unb64(body), _unb64(mac)
    except (ValueError, TypeError):
        return None
    wanted = hmac.new(signing_key(settings), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(wanted, given):
        return None
    try:
        session = _decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    return session if session.expires > time.time() else None


def current(request: Request) -> Session | None:
    value = request.cookies.get(COOKIE)
    return decode(request.app.state.settings, value) if value else None


def check_csrf(request: Request, session: Session) -> None:
    """A state-changing request must echo the session's CSRF token in a header, which a page
    of another origin can neither read nor send."""
    if request.method in SAFE_METHODS:
        return
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise ApiError(403, "missing or wrong CSRF token", "csrf_failed")


def admin_session(request: Request) -> bool:
    """True if the request carries a valid admin session (and, when it changes anything, the
    CSRF token): the admin API accepts it in place of the bearer token."""
    session = current(request)
    if session is None or session.role != "admin":
        return False
    check_csrf(request, session)
    return True


def set_cookie(response: Response, request: Request, settings: Settings, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        encode(settings, session),
        max_age=int(settings.console.console_session_hours * 3600),
        path="/",
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, secure=request.url.scheme == "https", samesite="strict"
    )
