"""Every llmq process runs on uvloop: the worker and the commands through
`event_loop.run`, the api through uvicorn's config."""

from __future__ import annotations

import asyncio

import uvloop

from llmq import cli, event_loop
from llmq.api.server import uvicorn_config
from llmq.schemas.settings import Settings


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_run_uses_uvloop() -> None:
    assert event_loop.AVAILABLE
    assert issubclass(event_loop.run(_loop_type()), uvloop.Loop)


def test_the_worker_entry_runs_on_uvloop() -> None:
    seen: list[type] = []

    async def probe() -> None:
        seen.append(await _loop_type())

    cli._run(probe())
    assert seen and issubclass(seen[0], uvloop.Loop)


def test_the_api_asks_uvicorn_for_uvloop() -> None:
    assert uvicorn_config(Settings()).loop == "uvloop"
