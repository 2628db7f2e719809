"""Bounds before admission: `max_tokens` / `max_completion_tokens` in 1..the model's limit
(the model table's `[models."<name>"]`, else `max_output_tokens`), `n` in 1..`max_n`, bodies
no decoder can take (invalid UTF-8, deep nesting): each a 400 naming the parameter, refused
before the quota script runs, so not even an RPM slot is used. The reservation counts every
choice. Against the real servers, with the official SDK where it can send the body."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmq.api.model_table import ModelTable
from llmq.api.preparation import RequestPreparer
from llmq.api.tenancy import Quota, Tenant, TenantStore
from llmq.embedded import EmbeddedNats
from llmq.schemas import names
from llmq.schemas.admission import Refusal
from llmq.schemas.endpoints import EndpointCall, pack
from llmq.schemas.registry import ModelInfo
from llmq.schemas.settings import Settings
from tests.dispatcher.lagging_catalog import lagging_catalog
from tests.spec import assert_valid
from tests.stack import unique, wait_for


async def quota_state(redis: Any, tenant: str) -> dict[str, object]:
    """Everything the tenant's quota counts (request and token windows, day and month
    budgets, reservations, held slots): equal before and after = no quota used."""
    state: dict[str, object] = {}
    async for key in redis.scan_iter(match=f"{names.REDIS_PREFIX}q:{tenant}:*"):
        kind = await redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            state[str(key)] = await redis.hgetall(key)
        elif kind == "zset":
            state[str(key)] = await redis.zrange(key, 0, -1)
        else:
            state[str(key)] = kind
    state["inflight"] = await Quota(redis).inflight(tenant)
    return state


async def new_tenant(redis: Any, **limits: Any) -> tuple[str, str]:
    store = TenantStore(redis)
    name = unique("t")
    await store.create(Tenant(name=name, **limits))
    key, _ = await store.create_key(name)
    return name, key


def _chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "a b c"}], **extra}


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 1))


BAD = [
    ("chat", {"max_tokens": -1}, "max_tokens", "integer_below_min_value"),
    ("chat", {"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ("chat", {"max_completion_tokens": 0}, "max_completion_tokens", "integer_below_min_value"),
    ("chat", {"max_tokens": 10**17}, "max_tokens", "integer_above_max_value"),
    ("chat", {"max_tokens": 10**19}, "max_tokens", "integer_above_max_value"),
    ("chat", {"max_tokens": 65}, "max_tokens", "integer_above_max_value"),  # model limit 64
    ("chat", {"max_completion_tokens": 65}, "max_completion_tokens", "integer_above_max_value"),
    ("chat", {"n": 0}, "n", "integer_below_min_value"),
    ("chat", {"n": -3}, "n", "integer_below_min_value"),
    ("chat", {"n": 9}, "n", "integer_above_max_value"),
    ("completion", {"max_tokens": -1}, "max_tokens", "integer_below_min_value"),
    ("completion", {"max_tokens": 10**17}, "max_tokens", "integer_above_max_value"),
    ("completion", {"n": 100}, "n", "integer_above_max_value"),
    ("embedding", {"input": [None]}, "input", "invalid_value"),
    ("embedding", {"input": []}, "input", "invalid_value"),
    ("embedding", {"input": [[]]}, "input", "invalid_value"),
    ("embedding", {"input": [True, 1]}, "input", "invalid_value"),
    ("embedding", {"input": ["a", 1]}, "input", "invalid_value"),
]


async def test_bad_bounds_are_400s_that_use_no_quota(stack, redis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With an RPM of 3, eighteen refused requests leave every counter as it was, and the
    next three requests still run."""
    model = unique("p")
    table = tmp_path / "models.toml"
    _write(table, f'[models."{model}"]\nmax_tokens = 64\n')
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, models_file=str(table))
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    tenant, key = await new_tenant(redis, rpm=3, tpm=1_000_000)
    headers = {"authorization": f"Bearer {key}"}
    before = await quota_state(redis, tenant)
    async with httpx.AsyncClient(timeout=10) as client:
        for kind, extra, param, code in BAD:
            if kind == "chat":
                url, body = f"{api.url}/v1/chat/completions", _chat(model, **extra)
            elif kind == "completion":
                url, body = f"{api.url}/v1/completions", {"model": model, "prompt": "x", **extra}
            else:
                url, body = f"{api.url}/v1/embeddings", {"model": model, **extra}
            resp = await client.post(url, json=body, headers=headers)
            assert resp.status_code == 400, (extra, resp.text)
            error = resp.json()["error"]
            assert (error["param"], error["code"]) == (param, code), (extra, error)
            assert error["type"] == "invalid_request_error"
            assert_valid("ErrorResponse", resp.json())
        assert await quota_state(redis, tenant) == before
        for _ in range(3):  # the RPM of 3 is whole
            ok = await client.post(
                f"{api.url}/v1/chat/completions", json=_chat(model, max_tokens=64), headers=headers
            )
            assert ok.status_code == 200, ok.text


async def test_the_sdk_hears_400_for_negative_max_tokens(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("p")
    api = await stack.api()
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=model, max_tokens=-1, messages=[{"role": "user", "content": "x"}]
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=model, n=1000, messages=[{"role": "user", "content": "x"}]
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "n"
    await client.close()


async def test_reservation_counts_every_choice(stack, redis) -> None:  # type: ignore[no-untyped-def]
    """`n` times max_tokens is reserved: with a TPM of 1000, n=4 of 300 does not fit, n=3 does."""
    model = unique("p")
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    _tenant, key = await new_tenant(redis, tpm=1000)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{api.url}/v1/chat/completions"
        refused = await client.post(url, json=_chat(model, n=4, max_tokens=300), headers=headers)
        assert refused.status_code == 429, refused.text
        ok = await client.post(url, json=_chat(model, n=3, max_tokens=300), headers=headers)
        assert ok.status_code == 200, ok.text
        assert int(ok.headers["x-ratelimit-remaining-tokens"]) <= 1000 - 3 * 300


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "\xff\xfe", "messages": []}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\xc3\x28"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": [{"a": '
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}]}]}",
        b"[" * 50_000,
    ],
    ids=["utf8-model", "utf8-content", "deep-in-content", "deep-top"],
)
async def test_undecodable_bodies_are_400s_everywhere(stack, redis, body: bytes) -> None:  # type: ignore[no-untyped-def]
    """Invalid UTF-8 and nesting deeper than the decoder goes, on every JSON endpoint."""
    admin = "adm-" + uuid.uuid4().hex
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token=admin)
    tenant, key = await new_tenant(redis, rpm=100)
    before = await quota_state(redis, tenant)
    user = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    boss = {"authorization": f"Bearer {admin}", "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=10) as client:
        for path, headers in (
            ("/v1/chat/completions", user),
            ("/v1/completions", user),
            ("/v1/embeddings", user),
            ("/v1/jobs", user),
            ("/v1/batches", user),
            ("/admin/tenants", boss),
        ):
            resp = await client.post(api.url + path, content=body, headers=headers)
            assert resp.status_code == 400, (path, resp.status_code, resp.text)
            assert_valid("ErrorResponse", resp.json())
    assert await quota_state(redis, tenant) == before


def test_model_table_limits(tmp_path: Path) -> None:
    from llmq.api.model_table import ModelTable
    from llmq.schemas.settings import Settings

    table_file = tmp_path / "models.toml"
    _write(
        table_file,
        '[aliases]\nfast = "echo"\n\n[defaults.echo]\nmax_tokens = 8\n\n'
        '[models."echo"]\nmax_tokens = 100\n\n[models."gpt-4.1"]\n',
    )
    table = ModelTable(Settings(models_file=str(table_file)))
    assert table.token_limit_for("echo") == 100
    assert table.token_limit_for("gpt-4.1") is None
    assert table.token_limit_for("other") is None
    defaults = table.defaults_for("echo")
    assert defaults is not None and defaults.max_tokens == 8
    _write(table_file, '[models."echo"]\nmax_tokens = 0\n')
    assert table.reload() is False  # a limit below 1 rejects the file; the last good one stays
    assert table.token_limit_for("echo") == 100
    _write(table_file, '[defaults.echo]\nmax_tokens = 9\n\n[models."echo"]\nmax_tokens = 8\n')
    assert table.reload() is False  # a default above the model's limit
    _write(table_file, '[models."echo"]\nmax_tokenz = 5\n')
    assert table.reload() is False
    _write(table_file, '[models."echo"]\nmax_tokens = 5\n')
    assert table.reload() is True and table.token_limit_for("echo") == 5


@pytest.mark.timeout(60)
async def test_a_durable_line_just_after_a_worker_s_first_heartbeat_is_prepared(
    own_nats: EmbeddedNats,
) -> None:
    """A batch line (or async job) for a model whose worker has just beaten for the first
    time, its catalog entry not yet through the models' watch: the preparer reads the entry
    (`load_catalog`), as the interactive paths do, rather than refusing an endpoint line
    with a 404 or taking a chat line for a kind the model does not serve."""
    entries = [
        ModelInfo(name="moderator", endpoints=["/v1/moderations"], kinds=["chat"]),
        ModelInfo(name="embedder", endpoints=["/v1/moderations"], kinds=["embedding"]),
    ]
    async with lagging_catalog(own_nats.url, entries, ["moderator", "embedder"]) as registry:
        preparer = RequestPreparer(ModelTable(Settings()), registry, 256)

        line = pack(EndpointCall("/v1/moderations", "application/json"), b'{"model":"moderator"}')
        prepared = await preparer.prepare_durable("endpoint", line)
        assert prepared.model == "moderator" and prepared.kind == "endpoint"
        with pytest.raises(Refusal) as refused:
            await preparer.prepare_durable("chat", json.dumps(_chat("embedder")).encode())
        assert refused.value.code == "unsupported_endpoint"
