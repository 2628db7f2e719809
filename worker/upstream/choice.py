"""Which `UpstreamClient` serves a backend: the one module that names the implementations.

Plain-http upstreams without a proxy (local model servers) get the lean `FastClient`:
httpx costs about a millisecond per call. Everything else, and every upstream when the
`backend_http_client` setting says `httpx`, gets `HttpxClient`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit

from llmq.worker.upstream import fast_client as fast
from llmq.worker.upstream.client import UpstreamClient
from llmq.worker.upstream.httpx_client import HttpxClient


def open_client(
    url: str, headers: Mapping[str, str], connect_timeout: float, choice: str = "auto"
) -> UpstreamClient:
    """A client for the upstream at `url`; `choice` is the `http_client` backend option."""
    lean = fast_client(url, headers, connect_timeout, enabled=choice != "httpx")
    return lean or HttpxClient(headers, connect_timeout)


def fast_client(
    url: str, headers: Mapping[str, str], connect_timeout: float, enabled: bool = True
) -> fast.FastClient | None:
    """A FastClient for `url` when it can serve it: plain http, no proxy configured for the
    host, httptools importable; else None (use httpx)."""
    if not enabled or not fast.AVAILABLE:
        return None
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.username or parts.password:
        return None
    proxies = urllib.request.getproxies()
    if (proxies.get("http") or proxies.get("all")) and not urllib.request.proxy_bypass(
        parts.hostname
    ):
        return None
    return fast.FastClient(headers, connect_timeout)
