"""Client matrix, JavaScript: openai-node and the Vercel AI SDK (`ai` + `@ai-sdk/openai`, its
default Responses-based provider: two turns, a tool loop, JSON, reasoning) against llmq and
a chat upstream that really calls tools, writes JSON and reasons. The scripts live in
tests/js_openai (package.json + package-lock.json; `make test` runs `npm ci` there)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.clients import Served, served

__all__ = ["served"]
HERE = Path(__file__).resolve().parents[1] / "js_openai"


async def run_script(script: str, served: Served) -> dict[str, str]:
    if shutil.which("node") is None or not (HERE / "node_modules").is_dir():
        pytest.skip("node or tests/js_openai/node_modules missing: run `make test` (npm ci)")
    env = {**os.environ, "LLMQ_URL": served.url, "LLMQ_MODEL": served.model}
    proc = await asyncio.create_subprocess_exec(
        "node", script, cwd=HERE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()[-3000:]
    results: dict[str, str] = json.loads(lines[-1])
    return results


async def test_openai_node(served: Served) -> None:
    results = await run_script("openai_node.mjs", served)
    assert results == dict.fromkeys(results, "pass"), results
    assert set(results) == {"chat", "chat tools", "chat json", "responses", "responses tools",
                            "responses json"}  # fmt: skip


async def test_ai_sdk(served: Served) -> None:
    results = await run_script("ai_sdk.mjs", served)
    assert results == dict.fromkeys(results, "pass"), results
    assert set(results) == {"two turns", "tool loop", "json", "reasoning"}
    # the AI SDK's second turn referred to the first answer by id: it was resolved
    bodies = [b for b in served.chat_bodies() if b["messages"][-1].get("content") == [
        {"type": "text", "text": "again"}]]  # fmt: skip
    assert bodies and bodies[0]["messages"][1] == {
        "role": "assistant",
        "content": "Hello from llmq.",
    }
