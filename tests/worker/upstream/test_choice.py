"""Which client serves a backend (worker/upstream/choice.py): the lean one for http and
https upstreams, httpx only when the setting asks for it or for what the lean one lacks."""

from __future__ import annotations

import pytest

from llmq.worker.backends.base import BackendConfig
from llmq.worker.upstream.calls import Upstream
from llmq.worker.upstream.choice import fast_client
from llmq.worker.upstream.fast_client import FastClient
from llmq.worker.upstream.httpx_client import HttpxClient


def test_chosen_for_http_and_https_direct_or_through_an_http_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert isinstance(fast_client("http://gpu1:8000/v1", {}, 1.0), FastClient)
    assert isinstance(fast_client("https://api.openai.com/v1", {}, 1.0), FastClient)
    assert fast_client("http://user:pw@gpu1:8000/v1", {}, 1.0) is None
    assert fast_client("http://gpu1:8000/v1", {}, 1.0, enabled=False) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert isinstance(fast_client("https://api.openai.com/v1", {}, 1.0), FastClient)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy:1080")  # not one the lean client speaks
    assert fast_client("https://api.openai.com/v1", {}, 1.0) is None
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert isinstance(fast_client("https://api.openai.com/v1", {}, 1.0), FastClient)


_PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)


async def test_upstream_picks_the_client_by_base_url_and_option() -> None:
    chosen = [
        type(Upstream(BackendConfig(kind="openai", http_client=client), {}, base).client)
        for base, client in (
            ("http://127.0.0.1:1/v1", "auto"),
            ("https://api.openai.com/v1", "auto"),
            ("http://127.0.0.1:1/v1", "httpx"),
        )
    ]
    assert chosen == [FastClient, FastClient, HttpxClient]
