"""The fake upstream every backend test talks to: a real HTTP server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from llmq.worker.backends import create_backend
from llmq.worker.backends.base import Backend, BackendConfig
from tests.worker.backends.fake_upstreams import FakeUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
async def built() -> AsyncIterator[Callable[[BackendConfig], Backend]]:
    """Builds backends from configs (as the worker does) and closes them all after the test."""
    made: list[Backend] = []

    def build(config: BackendConfig) -> Backend:
        backend = create_backend(config)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        await backend.aclose()
