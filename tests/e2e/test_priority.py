"""Priority classes (issue 16, point 3) are set on tenants and keys by the admin API and
`llmq tenants|keys`, checked strictly, and resolve to the class a request is served at: the
key's, capped by its tenant's. Real Valkey, an in-process api, the `llmq` command line. The
order they make on a busy model is tested in tests/e2e/test_fair_share.py and
tests/api/test_fair_share.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx
from starlette.requests import Request

from llmq.api.auth import Authenticator
from llmq.api.tenancy import Tenant, TenantStore, connect
from llmq.api.tenancy.models import PRIORITY_RANK
from tests.stack import unique

ADMIN = "admin-secret"


def _request(**headers: str) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "query_string": b"",
                    "headers": raw})  # fmt: skip


async def _rank(auth: Authenticator, key: str) -> int:
    request = _request(Authorization=f"Bearer {key}")
    await auth.tenant(request)
    return await auth.rank(request)


def _llmq(redis_url: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args, "--json"],
        env={**os.environ, "LLMQ_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


async def test_the_admin_api_sets_classes_and_a_key_never_ranks_above_its_tenant(
    stack: Any,
) -> None:
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token=ADMIN)
    auth: Authenticator = api.app.state.serving.auth
    admin = {"authorization": f"Bearer {ADMIN}"}
    name = unique("t")
    async with httpx.AsyncClient(base_url=api.url, headers=admin) as client:
        bad = await client.post("/admin/tenants", json={"name": name, "priority": "urgent"})
        assert bad.status_code == 400 and "priority" in bad.json()["error"]["message"]
        made = await client.post("/admin/tenants", json={"name": name, "priority": "high"})
        assert made.status_code == 201 and made.json()["priority"] == "high"
        own = (await client.post(f"/admin/tenants/{name}/keys", json={})).json()
        low = (await client.post(f"/admin/tenants/{name}/keys", json={"priority": "low"})).json()
        assert (own["priority"], low["priority"]) == ("", "low")
        wrong = await client.post(f"/admin/tenants/{name}/keys", json={"priority": "top"})
        assert wrong.status_code == 400
        assert await _rank(auth, own["key"]) == PRIORITY_RANK["high"]  # the tenant's
        assert await _rank(auth, low["key"]) == PRIORITY_RANK["low"]
        lowered = await client.patch(f"/admin/tenants/{name}", json={"priority": "normal"})
        assert lowered.status_code == 200 and lowered.json()["priority"] == "normal"
        assert await _rank(auth, own["key"]) == PRIORITY_RANK["normal"]


async def test_the_command_line_sets_classes(stack: Any, redis_server: Any) -> None:
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    auth: Authenticator = api.app.state.serving.auth
    name = unique("t")
    assert _llmq(redis_server.url, "tenants", "create", name, "--priority", "low")["priority"] == (
        "low"
    )
    key = _llmq(redis_server.url, "keys", "create", name, "--priority", "high")
    assert key["priority"] == "high"  # stored as asked ...
    assert await _rank(auth, key["key"]) == PRIORITY_RANK["low"]  # ... served at the tenant's
    updated = _llmq(redis_server.url, "tenants", "update", name, "--priority", "high")
    assert updated["priority"] == "high"
    assert await _rank(auth, key["key"]) == PRIORITY_RANK["high"]


async def test_header_mode_uses_the_tenant_record(stack: Any, redis_server: Any) -> None:
    high, plain = unique("t"), unique("t")
    redis = connect(redis_server.url)
    await TenantStore(redis).create(Tenant(name=high, priority="high"))
    await redis.aclose()
    api = await stack.api(auth_mode="header", tenant_header="X-Team", trusted_tenants=[high, plain])
    auth: Authenticator = api.app.state.serving.auth
    assert await auth.rank(_request(**{"X-Team": high})) == PRIORITY_RANK["high"]
    assert await auth.rank(_request(**{"X-Team": plain})) == PRIORITY_RANK["normal"]  # no record
