"""The fake upstream every backend test talks to: a real HTTP server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.worker.backends.fake_upstreams import FakeUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server
