"""Which client serves a backend (worker/upstream/choice.py): the lean one for plain-http
upstreams without a proxy, httpx for the rest or when the setting asks for it."""

from __future__ import annotations

import pytest

from llmq.worker.backends.base import BackendConfig
from llmq.worker.upstream.calls import Upstream
from llmq.worker.upstream.choice import fast_client
from llmq.worker.upstream.fast_client import FastClient
from llmq.worker.upstream.httpx_client import HttpxClient


def test_chosen_only_for_plain_http_without_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(fast_client("http://gpu1:8000/v1", {}, 1.0), FastClient)
    assert fast_client("https://api.openai.com/v1", {}, 1.0) is None
    assert fast_client("http://user:pw@gpu1:8000/v1", {}, 1.0) is None
    assert fast_client("http://gpu1:8000/v1", {}, 1.0, enabled=False) is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert fast_client("http://gpu1:8000/v1", {}, 1.0) is None
    monkeypatch.setenv("NO_PROXY", "gpu1")
    assert isinstance(fast_client("http://gpu1:8000/v1", {}, 1.0), FastClient)


async def test_upstream_picks_the_client_by_base_url_and_option() -> None:
    chosen = [
        type(Upstream(BackendConfig(kind="openai", http_client=client), {}, base).client)
        for base, client in (
            ("http://127.0.0.1:1/v1", "auto"),
            ("https://api.openai.com/v1", "auto"),
            ("http://127.0.0.1:1/v1", "httpx"),
        )
    ]
    assert chosen == [FastClient, HttpxClient, HttpxClient]
