"""Which `UpstreamClient` serves a backend: the one module that names the implementations.

Every upstream, http or https, direct or through an `http://` proxy, gets the lean
`FastClient` (docs/backends.md has the measurements: httpx costs about four times its CPU
per call). httpx stays as an explicit fallback (`backend_http_client = "httpx"`, or a URL
the lean client does not serve: credentials in the URL, a proxy that is not `http://`,
httptools missing) because it is the widely used, independently maintained path: an
escape hatch if an upstream or proxy trips over the lean client.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from llmq.worker.upstream import fast_client as fast
from llmq.worker.upstream.client import UpstreamClient
from llmq.worker.upstream.connect import UnsupportedProxy, proxy_for
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
    """A FastClient for `url` when it can serve it: http or https, no credentials in the
    URL, no proxy or an `http://` one, httptools importable; else None (use httpx)."""
    if not enabled or not fast.AVAILABLE:
        return None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    try:
        proxy_for(scheme, parts.hostname)
    except UnsupportedProxy:
        return None
    return fast.FastClient(headers, connect_timeout)
