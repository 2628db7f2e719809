"""What the api tells strangers about itself: `/openapi.json` and `/docs` (when turned on)
describe the public API only; the admin API has its own document behind the admin token;
`/metrics` (the api's and a worker's) can require a bearer token (`LLMQ_METRICS_TOKEN`, or a
file holding it)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from llmq.embedded import free_port
from llmq.schemas.settings import Settings
from tests.spec import assert_valid
from tests.stack import unique

ADMIN = "admin-secret-" + uuid.uuid4().hex
METRICS = "metrics-secret-" + uuid.uuid4().hex


async def test_public_document_has_no_admin_routes(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(auth_mode="keys", admin_token=ADMIN, docs=True)  # /docs: off by default
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        resp = await client.get("/openapi.json")
        docs = await client.get("/docs")
    assert resp.status_code == 200
    paths = set(resp.json()["paths"])
    assert "/v1/chat/completions" in paths and "/v1/models/{model_id}" in paths
    assert "/v1/files" in paths and "/v1/batches" in paths and "/v1/jobs" in paths
    assert not [p for p in paths if p.startswith("/admin")], paths
    assert "/metrics" not in paths
    assert ADMIN not in resp.text
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert "/admin" not in docs.text


async def test_admin_document_needs_the_admin_token(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(auth_mode="keys", admin_token=ADMIN)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        anonymous = await client.get("/admin/openapi.json")
        wrong = await client.get("/admin/openapi.json", headers={"authorization": "Bearer nope"})
        right = await client.get(
            "/admin/openapi.json", headers={"authorization": f"Bearer {ADMIN}"}
        )
    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert_valid("ErrorResponse", refused.json())
        assert "paths" not in refused.text
    assert right.status_code == 200
    document = right.json()
    paths = set(document["paths"])
    assert "/admin/tenants" in paths and "/admin/tenants/{name}/keys" in paths
    assert "/admin/prices/{model}" in paths and "/admin/ledger" in paths
    assert not [p for p in paths if not p.startswith("/admin/")], paths
    assert "/admin/openapi.json" not in paths
    assert document["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"


async def test_admin_document_is_off_with_the_admin_api(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(auth_mode="keys", admin_token="")
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        resp = await client.get("/admin/openapi.json", headers={"authorization": "Bearer x"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_disabled"


async def test_api_metrics_need_the_token_when_one_is_set(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(metrics_token=METRICS)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"authorization": f"Bearer {METRICS}x"})
        right = await client.get("/metrics", headers={"authorization": f"Bearer {METRICS}"})
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert_valid("ErrorResponse", refused.json())
        assert refused.json()["error"]["code"] == "invalid_metrics_token"
        assert "llmq_api" not in refused.text
    assert right.status_code == 200 and "llmq_api_requests_total" in right.text


async def test_api_metrics_stay_open_without_a_token(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        resp = await client.get("/metrics")
    assert resp.status_code == 200 and "llmq_api_requests_total" in resp.text


async def test_worker_metrics_need_the_token_when_one_is_set(stack) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    await stack.worker(
        model=[unique("mt")],
        metrics_port=port,
        metrics_host="127.0.0.1",
        metrics_token=METRICS,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    async with httpx.AsyncClient(timeout=10) as client:
        missing = await client.get(url)
        wrong = await client.get(url, headers={"authorization": "Bearer x"})
        right = await client.get(url, headers={"authorization": f"Bearer {METRICS}"})
    for refused in (missing, wrong):
        assert refused.status_code == 401 and "llmq_worker" not in refused.text
    assert right.status_code == 200 and "llmq_worker_capacity" in right.text


def test_metrics_token_comes_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMQ_METRICS_TOKEN", "from-env")
    assert Settings().observability.metrics_token == "from-env"
    assert "from-env" not in repr(Settings().observability)
    monkeypatch.delenv("LLMQ_METRICS_TOKEN")
    secret = tmp_path / "metrics-token"
    secret.write_text("from-file\n")
    monkeypatch.setenv("LLMQ_METRICS_TOKEN_FILE", str(secret))
    assert Settings().observability.metrics_token == "from-file"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        Settings(metrics_token_file=str(tmp_path / "empty"))


async def test_admin_token_comes_from_a_file(
    stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """LLMQ_ADMIN_TOKEN_FILE: the admin token as a mounted secret, read at start."""
    monkeypatch.delenv("LLMQ_ADMIN_TOKEN", raising=False)
    secret = tmp_path / "admin-token"
    secret.write_text(ADMIN + "\n")
    monkeypatch.setenv("LLMQ_ADMIN_TOKEN_FILE", str(secret))
    assert Settings().api.admin_token == ADMIN and ADMIN not in repr(Settings().api)
    api = await stack.api(auth_mode="keys", admin_token_file=str(secret))
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        wrong = await client.get("/admin/tenants", headers={"authorization": "Bearer nope"})
        right = await client.get("/admin/tenants", headers={"authorization": f"Bearer {ADMIN}"})
    assert wrong.status_code == 401 and right.status_code == 200
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"admin_token_file .* is empty"):
        Settings(admin_token_file=str(tmp_path / "empty"))
