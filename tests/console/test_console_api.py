"""The console's server side without a browser: login into a signed session cookie, its
flags, CSRF, the Content-Security-Policy, what a tenant session may see, the model table
saved with live reload, usage CSV, a key's last use, the live overview and the workers page."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmq.api.console.session import COOKIE
from llmq.api.tenancy import Tenant, TenantStore, connect
from tests.stack import wait_for

ADMIN = "console-admin-token"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield TenantStore(client)
    await client.aclose()


@asynccontextmanager
async def _admin(api_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        resp = await client.post("/ui/api/login", json={"token": ADMIN})
        assert resp.status_code == 200, resp.text
        yield client, resp.json()["csrf"]


async def test_pages_are_static_with_a_strict_csp_and_no_inline_script(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(auth_mode="keys", admin_token=ADMIN)
    async with httpx.AsyncClient(base_url=api.url) as client:
        page = await client.get("/ui")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
        assert scripts and all('src="/ui/static/' in a and not body.strip() for a, body in scripts)
        assert not re.search(r"\son[a-z]+=", page.text), "no inline event handlers"
        for src in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text):
            asset = await client.get(src)
            assert asset.status_code == 200 and asset.content, src
            assert "content-security-policy" in asset.headers
        assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text), "no CDN"
        other = await client.get("/v1/models")
        assert "content-security-policy" not in other.headers, "only the console's responses"


async def test_login_sets_a_hardened_cookie_and_never_takes_the_token_in_a_url(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(auth_mode="keys", admin_token=ADMIN)
    async with httpx.AsyncClient(base_url=api.url) as client:
        wrong = await client.post("/ui/api/login", json={"token": "nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_credentials"
        by_url = await client.get("/ui/api/login", params={"token": ADMIN})
        assert by_url.status_code == 405 and COOKIE not in by_url.cookies
        form = await client.post("/ui/api/login", data={"token": ADMIN})
        assert form.status_code == 415, "a cross-site HTML form cannot log in"
        foreign = await client.post(
            "/ui/api/login", json={"token": ADMIN}, headers={"origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        ok = await client.post("/ui/api/login", json={"token": ADMIN})
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie and ADMIN not in cookie
        tls = await client.post(
            "/ui/api/login", json={"token": ADMIN}, headers={"x-forwarded-proto": "https"}
        )
        assert "Secure" in tls.headers["set-cookie"], "Secure when served over TLS"


async def test_admin_api_takes_the_session_only_with_the_csrf_token(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(auth_mode="keys", admin_token=ADMIN)
    async with _admin(api.url) as (client, csrf):
        assert (await client.get("/admin/tenants")).status_code == 200
        name = _name("csrf")
        refused = await client.post("/admin/tenants", json={"name": name})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
        made = await client.post(
            "/admin/tenants", json={"name": name}, headers={"x-csrf-token": csrf}
        )
        assert made.status_code == 201
        # a tampered cookie is no session
        value = client.cookies[COOKIE]
        client.cookies.set(COOKIE, value[:-3] + ("AAA" if value[-3:] != "AAA" else "BBB"))
        assert (await client.get("/admin/tenants")).status_code == 401
        assert (await client.get("/ui/api/session")).json() == {"logged_in": False}
        gone = await client.post("/ui/api/logout")
        assert gone.status_code == 200


async def test_tenant_session_is_read_only_and_ends_with_its_key(stack, store) -> None:  # type: ignore[no-untyped-def]
    model = _name("m")
    await stack.worker(model=[model])
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token=ADMIN)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    tenant, other = _name("mine"), _name("other")
    await store.create(Tenant(name=tenant, rpm=42))
    await store.create(Tenant(name=other))
    key, record = await store.create_key(tenant)
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    await sdk.close()
    async with httpx.AsyncClient(base_url=api.url) as client:
        login = await client.post("/ui/api/login", json={"token": key})
        assert login.json()["role"] == "tenant" and login.json()["tenant"] == tenant

        async def booked() -> bool:
            return bool((await client.get("/ui/api/me")).json()["usage"])

        await wait_for(booked)
        me = (await client.get("/ui/api/me")).json()
        assert me["limits"]["name"] == tenant and me["limits"]["rpm"] == 42
        assert {row["tenant"] for row in me["usage"]} == {tenant}
        for path in ("/admin/tenants", f"/admin/tenants/{other}/usage", "/admin/ledger"):
            assert (await client.get(path)).status_code == 401, path
        for path in ("/ui/api/overview", "/ui/api/usage", "/ui/api/top", "/ui/api/models"):
            assert (await client.get(path)).status_code == 403, path
        await store.revoke_key(tenant, record.id)
        assert (await client.get("/ui/api/me")).status_code == 401


async def test_model_table_saved_from_the_console_reloads_live(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.toml"
    path.write_text('[aliases]\nold = "echo"\n')
    api = await stack.api(auth_mode="keys", admin_token=ADMIN, models_file=str(path))
    async with _admin(api.url) as (client, csrf):
        shown = (await client.get("/ui/api/models")).json()
        assert shown["editable"] and shown["aliases"] == {"old": "echo"}
        table = {
            "aliases": {"fast": "echo", "gpt 4": "llama3:8b"},
            "defaults": {"echo": {"temperature": 0.25, "max_tokens": 64}},
        }
        saved = await client.put("/ui/api/models", json=table, headers={"x-csrf-token": csrf})
        assert saved.status_code == 200, saved.text
        models = api.app.state.models
        assert models.resolve("fast") == "echo" and models.resolve("gpt 4") == "llama3:8b"
        assert models.resolve("old") == "old"
        assert models.defaults_for("echo").max_tokens == 64
        bad = await client.put(
            "/ui/api/models", json={"aliases": {"x": 3}}, headers={"x-csrf-token": csrf}
        )
        assert bad.status_code == 400 and models.resolve("fast") == "echo"


async def test_usage_csv_overview_and_workers(stack, store) -> None:  # type: ignore[no-untyped-def]
    model = _name("m")
    worker = await stack.worker(model=[model], capacity=3)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token=ADMIN)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    tenant = _name("csv")
    await store.create(Tenant(name=tenant))
    key, _ = await store.create_key(tenant)
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    sent_at = time.time()
    stream = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count me"}], stream=True
    )
    async for _ in stream:
        pass
    await sdk.close()
    async with _admin(api.url) as (client, _csrf):

        async def csv_row() -> str | None:
            text = (await client.get("/ui/api/usage.csv", params={"tenant": tenant})).text
            return next((line for line in text.splitlines() if tenant in line), None)

        await wait_for(csv_row)
        resp = await client.get("/ui/api/usage.csv", params={"tenant": tenant})
        assert resp.headers["content-type"].startswith("text/csv")
        header, row = resp.text.splitlines()[0], await csv_row()
        assert header.startswith("day,tenant,model,requests")
        assert row is not None and f",{tenant},{model},1,0," in row

        async def last_used() -> float:
            listed = (await client.get(f"/admin/tenants/{tenant}/keys")).json()["data"]
            return float(listed[0]["last_used_at"])

        await wait_for(last_used)  # the admin API's key listing says when the key was used
        assert abs(await last_used() - sent_at) < 120
        overview = (await client.get("/ui/api/overview")).json()
        assert overview["requests"] >= 1 and overview["ttft_p50"] is not None
        assert overview["workers_up"] >= 1
        assert len(overview["history"]) == 12 and sum(b["ok"] for b in overview["history"]) >= 1
        top: dict[str, Any] = {}

        async def top_with_my_stats() -> bool:
            """The page joins the registry with each worker's micro STATS reply, gathered for
            0.5 s; a loaded machine can miss it (errors `None`), so ask until it came."""
            top.update((await client.get("/ui/api/top")).json())
            mine = [w for w in top["workers"] if w["id"] == worker.id]
            return bool(mine) and mine[0]["errors"] is not None

        await wait_for(top_with_my_stats)
        mine = [w for w in top["workers"] if w["id"] == worker.id]
        assert mine and mine[0]["capacity"] == 3 and mine[0]["state"] == "ready"
        assert mine[0]["circuit"] == "closed" and mine[0]["errors"] == 0
        served = [m for m in top["models"] if m["name"] == model]
        assert served and served[0]["wait"] == 0.0, "no queue: a new job would not wait"
