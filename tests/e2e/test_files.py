"""`/v1/files` end to end (finding 9 of issue 12): uploads are read as they arrive and checked
line by line, never held whole; a tenant's files count against its storage quota; a file
may expire (`expires_after`) and is then a 404 and swept away. Bodies validate against
OpenAI's spec."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from llmq.api.batch.multipart import read_multipart
from llmq.api.errors import ApiError
from llmq.api.tenancy import Tenant, TenantStore, connect
from llmq.dispatcher import kv as kvs
from llmq.schemas import names
from tests.spec import assert_valid
from tests.stack import unique, wait_for

CHAT = "/v1/chat/completions"


def lines(n: int, pad: int = 0) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * pad}]}
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": body}).encode()
        + b"\n"
        for i in range(n)
    )


async def upload(
    client: httpx.AsyncClient, data: bytes, headers: dict[str, str] | None = None, **fields: str
) -> httpx.Response:
    return await client.post(
        "/v1/files",
        files={"file": ("in.jsonl", data, "application/jsonl")},
        data={"purpose": "batch", **fields},
        headers=headers or {},
    )


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    return error


async def test_sdk_upload_with_expiry_and_spec_shapes(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    data = lines(3)
    made = await sdk.files.create(
        file=("in.jsonl", data),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert made.bytes == len(data) and made.expires_at == made.created_at + 7200
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        one = (await client.get(f"/v1/files/{made.id}")).json()
        assert_valid("OpenAIFile", one)
        assert one["expires_at"] == made.expires_at
        plain = (await upload(client, data)).json()
        assert_valid("OpenAIFile", plain)
        assert "expires_at" not in plain
        listed = (await client.get("/v1/files", params={"limit": 2})).json()
        assert_valid("ListFilesResponse", listed)
        assert [f["id"] for f in listed["data"]] == [plain["id"], made.id]
        assert (await client.get(f"/v1/files/{made.id}/content")).content == data
        deleted = (await client.delete(f"/v1/files/{made.id}")).json()
        assert_valid("DeleteFileResponse", deleted)
        assert deleted == {"id": made.id, "object": "file", "deleted": True}
        assert (await client.delete(f"/v1/files/{plain['id']}")).status_code == 200
        for fields, param in (
            ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "7200"},
             "expires_after.anchor"),
            ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
             "expires_after.seconds"),
            ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "9999999"},
             "expires_after.seconds"),
            ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
        ):  # fmt: skip
            error = assert_error(await upload(client, data, **fields), 400, "invalid_request")
            assert error["param"] == param


async def test_an_expired_file_is_gone_and_swept(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(files_min_expiry=1, file_expiry_sweep=0.2)
    wing = api.app.state.batches
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        # `created_at` is whole seconds, so the file lives between `life` - 1 and `life` seconds
        # after its upload: seconds to spare for the "still there" look on a loaded machine.
        life = 5
        fields = {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(life)}
        kept = (await upload(client, lines(2))).json()
        short = (await upload(client, lines(2), **fields)).json()
        assert short["expires_at"] == short["created_at"] + life
        looked = await client.get(f"/v1/files/{short['id']}")
        assert looked.status_code == 200 and looked.json()["id"] == short["id"]

        async def gone() -> bool:
            resp = await client.get(f"/v1/files/{short['id']}")
            return resp.status_code == 404

        await wait_for(gone, timeout=life + 30)
        assert time.time() >= short["expires_at"]  # gone because it expired, not before
        assert (await client.get(f"/v1/files/{short['id']}/content")).status_code == 404
        listed = [f["id"] for f in (await client.get("/v1/files")).json()["data"]]
        assert short["id"] not in listed and kept["id"] in listed

        async def swept() -> bool:
            keys = await kvs.scan(wing.files.meta, f"_.{short['id']}", meta_only=True)
            return not keys

        await wait_for(swept, timeout=30)
        assert (await client.get(f"/v1/files/{kept['id']}")).status_code == 200
        await client.delete(f"/v1/files/{kept['id']}")


async def test_storage_quota_per_tenant(stack) -> None:  # type: ignore[no-untyped-def]
    redis = connect(stack.redis_url)
    store = TenantStore(redis)
    name = unique("q")
    await store.create(Tenant(name=name, storage_bytes=1000))
    api = await stack.api(auth_mode="header", trusted_tenants=name)
    headers = {"X-Tenant-ID": name}
    data = lines(3)
    assert 300 < len(data) < 500
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        first = (await upload(client, data, headers)).json()
        second = (await upload(client, data, headers)).json()
        error = assert_error(await upload(client, data, headers), 413, "storage_quota_exceeded")
        assert error["param"] == "file" and error["type"] == "invalid_request_error"
        assert len((await client.get("/v1/files", headers=headers)).json()["data"]) == 2
        await client.delete(f"/v1/files/{first['id']}", headers=headers)
        assert (await upload(client, data, headers)).status_code == 200
        await store.update(name, {"storage_bytes": 0})  # 0 = unlimited
        assert (await upload(client, data, headers)).status_code == 200
        assert second["id"]
    await redis.aclose()


async def test_bad_files_are_refused_with_a_clear_400(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(batch_max_lines=5, files_max_bytes=4000)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        not_utf8 = lines(2) + b'{"custom_id": "\xff\xfe"}\n'
        error = assert_error(await upload(client, not_utf8), 400, "invalid_file")
        assert "line 3" in error["message"]
        assert_error(await upload(client, b"not json\nat all\n"), 400, "invalid_file")
        assert_error(await upload(client, b"\n\n"), 400, "invalid_file")
        assert_error(await upload(client, lines(6)), 400, "too_many_requests_in_file")
        assert_error(await upload(client, lines(5, pad=1000)), 413, "file_too_large")
        resp = await client.post("/v1/files", content=b"x", headers={"content-type": "text/plain"})
        assert_error(resp, 400, "invalid_request")
        boundary = "b0undary"
        cut = f'--{boundary}\r\ncontent-disposition: form-data; name="file"\r\n\r\n{{}}'
        resp = await client.post(
            "/v1/files",
            content=cut.encode(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert_error(resp, 400, "invalid_request")


async def test_a_refused_upload_uses_no_rpm_and_an_accepted_one_does(stack) -> None:  # type: ignore[no-untyped-def]
    """An upload counts against the RPM once accepted, before it is stored: refused ones
    leave the tenant's rate in Valkey as it was; past the RPM a good file gets a 429 and
    is not stored."""
    redis = connect(stack.redis_url)
    store = TenantStore(redis)
    name = unique("rpm")
    await store.create(Tenant(name=name, rpm=2))
    key, _ = await store.create_key(name)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, batch_max_lines=5)
    headers = {"authorization": f"Bearer {key}"}
    rate = names.rate_key(name)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        for _ in range(4):  # more refusals than the RPM allows calls
            assert_error(await upload(client, b"not json\n", headers), 400, "invalid_file")
            assert_error(await upload(client, lines(6), headers), 400, "too_many_requests_in_file")
            resp = await client.post("/v1/files", files={"file": ("a", lines(1))}, headers=headers)
            assert_error(resp, 400, "invalid_request")  # no purpose
        assert await redis.hgetall(rate) == {}  # never counted
        assert (await upload(client, lines(1), headers)).status_code == 200
        counted = await redis.hgetall(rate)
        assert counted  # the accepted one was
        assert_error(await upload(client, b"{", headers), 400, "invalid_file")
        assert await redis.hgetall(rate) == counted
        assert (await upload(client, lines(1), headers)).status_code == 200
        assert_error(await upload(client, lines(1), headers), 429, "rate_limit_exceeded")
        await store.update(name, {"rpm": 0})  # unlimited: the list call goes through
        listed = (await client.get("/v1/files", headers=headers)).json()["data"]
    assert len(listed) == 2  # the upload refused with a 429 was not stored
    await redis.aclose()


async def test_other_purposes_are_stored_as_they_came(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(files_max_bytes=4000)
    pdf = b"%PDF-1.4 not json at all\n\xff\xfe"
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        for purpose in ("user_data", "assistants", "vision", "evals"):
            made = await client.post(
                "/v1/files",
                files={"file": ("doc.pdf", pdf, "application/pdf")},
                data={"purpose": purpose},
            )
            assert made.status_code == 200, made.text
            if purpose != "evals":  # OpenAI's file object does not list the purpose it takes
                assert_valid("OpenAIFile", made.json())
            assert made.json()["purpose"] == purpose and made.json()["bytes"] == len(pdf)
            got = await client.get(f"/v1/files/{made.json()['id']}/content")
            assert got.content == pdf
        too_big = await client.post(
            "/v1/files",
            files={"file": ("big.bin", b"x" * 5000, "application/octet-stream")},
            data={"purpose": "user_data"},
        )
        assert_error(too_big, 413, "file_too_large")
        # the JSONL check still holds for batch files, whichever part comes first
        assert_error(await upload(client, pdf), 400, "invalid_file")
        assert_error(
            await client.post("/v1/files", files={"file": ("a", b"x")}, data={"purpose": "x"}),
            400, "invalid_purpose",
        )  # fmt: skip


async def test_a_large_upload_is_never_held_whole(stack) -> None:  # type: ignore[no-untyped-def]
    """24 MB through the api, sent in 64 KB pieces, while Python's allocations are traced:
    the peak stays a small fraction of the file (it was over twice the file when the body
    was read whole and split)."""
    api = await stack.api()
    data = lines(6000, pad=4000)
    assert len(data) > 24_000_000
    boundary = "llmq-test-boundary"
    head = (
        f'--{boundary}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="big.jsonl"'
        "\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        view = memoryview(data)
        for i in range(0, len(data), 65_536):
            yield bytes(view[i : i + 65_536])
        yield tail

    async with httpx.AsyncClient(base_url=api.url, timeout=120) as client:
        await asyncio.sleep(0.5)  # let the api's start-up allocations settle
        tracemalloc.start()
        try:
            resp = await client.post(
                "/v1/files",
                content=body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert resp.status_code == 200, resp.text
        assert resp.json()["bytes"] == len(data)
        assert peak < 8_000_000, peak
        file_id = resp.json()["id"]
        stored = (await client.get(f"/v1/files/{file_id}/content")).content
        assert stored == data
        await client.delete(f"/v1/files/{file_id}")


async def chunked(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100_000])
async def test_multipart_parts_survive_any_chunking(size: int) -> None:
    boundary = "XyZ-123"
    content = b"line one\r\n--XyZ-12 not yet\r\nline two\n"
    body = (
        (
            f"preamble\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="a \\"b\\".jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\nepilogue".encode()
    )
    got: dict[str, tuple[str | None, bytearray]] = {}

    class Sink:
        def __init__(self, name: str, filename: str | None) -> None:
            got[name] = (filename, bytearray())
            self.name = name

        def write(self, data: bytes) -> None:
            got[self.name][1].extend(data)

        def close(self) -> None:
            pass

    await read_multipart(chunked(body, size), f"multipart/form-data; boundary={boundary}", Sink)
    assert got == {"purpose": (None, bytearray(b"batch")), "file": ('a "b".jsonl', content)}
    with pytest.raises(ApiError):
        await read_multipart(
            chunked(body[:-20], size), f"multipart/form-data; boundary={boundary}", Sink
        )
