"""Redis/Valkey with `requirepass` (and TLS): the right password (in LLMQ_REDIS_URL, or
LLMQ_REDIS_PASSWORD / _FILE) serves end to end; a missing or wrong one is a clear error at
start and `/ready` says Redis fails; the password is never logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmq.api.tenancy import Tenant, TenantStore, connect, connect_with
from llmq.embedded import EmbeddedRedis
from llmq.schemas.settings import ConnectionSettings
from tests.stack import unique, wait_for

PASSWORD = "vk-" + uuid.uuid4().hex


@pytest.fixture
def locked_redis(tmp_path: Path) -> Any:
    server = EmbeddedRedis(tmp_path / "locked-redis", password=PASSWORD)
    yield server
    server.stop()


async def _tenant_key(url: str) -> str:
    redis = connect(url, password=PASSWORD)
    try:
        store = TenantStore(redis)
        name = unique("r")
        await store.create(Tenant(name=name))
        key, _ = await store.create_key(name, label="redis auth test")
        return key
    finally:
        await redis.aclose()


async def _serve_one(stack: Any, redis_url: str, key: str, **conn: Any) -> str:
    model = unique("ra")
    stack.redis_url = redis_url
    api = await stack.api(auth_mode="keys", **conn)
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=20)
    async with httpx.AsyncClient() as http:
        ready = await http.get(f"{api.url}/ready")
    assert ready.status_code == 200 and ready.json()["redis"] is True
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "quota checked"}], timeout=30
    )
    return reply.choices[0].message.content or ""


@pytest.mark.parametrize("how", ["password_setting", "password_file", "url"])
async def test_the_right_password_serves_end_to_end(
    how: str, locked_redis: Any, stack: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = await _tenant_key(locked_redis.url)
    url, conn = locked_redis.url, {}
    if how == "password_setting":
        conn = {"redis_password": PASSWORD}
    elif how == "password_file":
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        conn = {"redis_password_file": str(tmp_path / "pw")}
    else:
        url = locked_redis.url.replace("redis://", f"redis://:{PASSWORD}@")
    caplog.set_level(logging.INFO)
    assert await _serve_one(stack, url, key, **conn) == "quota checked"
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("password", ["", "wrong"])
async def test_a_missing_or_wrong_password_is_clear_and_not_ready(
    password: str, locked_redis: Any, stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = await _tenant_key(locked_redis.url)
    stack.redis_url = locked_redis.url
    caplog.set_level(logging.INFO)
    api = await stack.api(auth_mode="keys", redis_password=password)
    assert f"Redis at {locked_redis.url} refused authentication" in caplog.text
    async with httpx.AsyncClient() as http:
        ready = await http.get(f"{api.url}/ready")
        assert ready.status_code == 503 and ready.json()["failing"] == ["redis"]
        body = {"model": "any", "messages": [{"role": "user", "content": "x"}]}
        resp = await http.post(
            f"{api.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
    assert resp.status_code == 503 and set(resp.json()["error"]) >= {"message", "type"}
    assert PASSWORD not in caplog.text
    assert "wrong" not in caplog.text.replace("wrong number", "")


# --- rediss:// -------------------------------------------------------------------------------
# The embedded Valkey has no TLS built in, so a real TLS server in the test process (made
# with the fixture's certificates) terminates TLS in front of it, as a TLS proxy would.


@contextlib.asynccontextmanager
async def tls_front(pki: Any, port: int) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.server), str(pki.server_key))

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def test_rediss_with_a_ca_verifies_the_server(locked_redis: Any, pki: Any) -> None:
    async with tls_front(pki, locked_redis.port) as tls_port:
        url = f"rediss://127.0.0.1:{tls_port}/0"
        good = connect_with(
            ConnectionSettings(redis_url=url, redis_password=PASSWORD, redis_tls_ca=str(pki.ca)),
            timeout=5.0,
        )
        try:
            assert await good.ping() is True
            await good.set("llmq:test:tls", "1")
            assert await good.get("llmq:test:tls") == "1"
        finally:
            await good.aclose()
        wrong_ca = connect_with(
            ConnectionSettings(
                redis_url=url, redis_password=PASSWORD, redis_tls_ca=str(pki.other_ca)
            ),
            timeout=5.0,
        )
        try:
            with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
                await wrong_ca.ping()
        finally:
            await wrong_ca.aclose()
