"""Aliases and per-model defaults: from a TOML file and LLMQ_ALIASES, applied to requests,
re-read without a restart when the file changes; a broken file keeps the last good table."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import openai

from llmq.api.model_table import ModelTable
from llmq.schemas.settings import Settings
from tests.stack import unique, wait_for


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 1))  # a distinct mtime even within 1 s


def test_table_from_file_and_env(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    _write(
        models, '[aliases]\nfast = "echo"\n\n[defaults.echo]\ntemperature = 0.2\nmax_tokens = 3\n'
    )
    table = ModelTable(Settings(models_file=str(models), aliases=["gpt-4=openai:gpt-4.1"]))
    assert table.resolve("fast") == "echo"
    assert table.resolve("gpt-4") == "openai:gpt-4.1"
    assert table.resolve("echo") == "echo"
    defaults = table.defaults_for("echo")
    assert defaults is not None and (defaults.temperature, defaults.max_tokens) == (0.2, 3)
    _write(models, "[aliases\nbroken")
    assert table.reload() is False
    assert table.resolve("fast") == "echo"  # the last good table stays
    _write(models, '[aliases]\nquick = "echo"\n\n[defaults.echo]\nbogus = 1\n')
    assert table.reload() is False  # unknown field: rejected as a whole
    _write(models, '[aliases]\nquick = "echo"\n')
    assert table.reload() is True
    assert table.resolve("quick") == "echo" and table.resolve("fast") == "fast"
    assert table.resolve("gpt-4") == "openai:gpt-4.1"  # env aliases survive reloads


async def test_aliases_and_defaults_apply_and_reload_live(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = unique("tbl")
    models = tmp_path / "models.toml"
    _write(models, f'[aliases]\nshort = "{model}"\n\n[defaults."{model}"]\nmax_tokens = 2\n')
    api = await stack.api(models_file=str(models))
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused")
    text = "one two three four five"
    via_alias = await client.chat.completions.create(
        model="short", messages=[{"role": "user", "content": text}]
    )
    assert via_alias.model == model
    assert via_alias.choices[0].message.content == "one two"  # the default max_tokens
    assert via_alias.choices[0].finish_reason == "length"
    explicit = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=4
    )
    assert explicit.choices[0].message.content == "one two three four"  # the caller wins
    _write(models, f'[aliases]\nrenamed = "{model}"\n')

    async def reloaded() -> bool:
        async with httpx.AsyncClient() as http:
            body = {"model": "renamed", "messages": [{"role": "user", "content": text}]}
            return (await http.post(f"{api.url}/v1/chat/completions", json=body)).status_code == 200

    await wait_for(reloaded, timeout=5)
    whole = await client.chat.completions.create(
        model="renamed", messages=[{"role": "user", "content": text}]
    )
    assert whole.choices[0].message.content == text  # the default is gone too
    async with httpx.AsyncClient() as http:
        body = {"model": "short", "messages": [{"role": "user", "content": "x"}]}
        assert (await http.post(f"{api.url}/v1/chat/completions", json=body)).status_code == 404
    await client.close()
    await asyncio.sleep(0)


async def test_cors_when_origins_are_configured(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(cors_origins=["https://app.example"])
    async with httpx.AsyncClient() as client:
        preflight = await client.options(
            f"{api.url}/v1/chat/completions",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.get(f"{api.url}/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_fallbacks_and_max_queue_wait_parse_resolve_and_reject_a_loop(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    _write(
        models,
        '[aliases]\ncheap = "small"\n\n[models."big"]\nfallbacks = ["cheap", "big", "other", '
        '"small"]\nmax_queue_wait = 2.5\n',
    )
    assert ModelTable(Settings(models_file=str(models))).models == {}  # it lists itself: rejected
    _write(
        models,
        '[aliases]\ncheap = "small"\n\n[models."big"]\nfallbacks = ["cheap", "other", "small"]\n'
        "max_queue_wait = 2.5\n",
    )
    table = ModelTable(Settings(models_file=str(models)))
    assert table.fallbacks_for("big") == ["small", "other"]  # aliases resolved, no repeats
    assert table.max_queue_wait_for("big") == 2.5
    assert table.fallbacks_for("small") == [] and table.max_queue_wait_for("small") is None
    _write(models, '[models."big"]\nmax_queue_wait = -1\n')
    assert table.reload() is False  # a negative wait rejects the file; the last table stays
    assert table.fallbacks_for("big") == ["small", "other"]
