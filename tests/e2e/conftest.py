"""Fixtures the end-to-end backend tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.worker.backends.fake_upstreams import FakeUpstream, json_reply


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A recording OpenAI-compatible upstream (Ollama's version probe answered too)."""
    async with FakeUpstream() as server:
        server.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        server.route("/api/version", json_reply(200, {"version": "0.12.0"}))
        yield server
