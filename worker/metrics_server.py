"""The worker's HTTP endpoint: `/metrics` (Prometheus, bearer token optional), `/health` and
`/ready`, served from a thread so a busy event loop never delays a scrape or a probe."""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

_TEXT = [("Content-Type", "text/plain")]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


class MetricsServer:
    """prometheus-client's WSGI app on its threaded WSGI server (a daemon thread, as its
    `start_http_server` runs it), answering `/metrics` (401 without the bearer token, when
    one is set; compared in constant time), the probes `/health` (200 while the process
    runs) and `/ready` (200 while `ready()`: connected and taking jobs; else 503), and 404
    for any other path."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port

    @classmethod
    def start(
        cls,
        registry: CollectorRegistry,
        host: str,
        port: int,
        token: str = "",
        ready: Callable[[], bool] = lambda: True,
    ) -> MetricsServer:
        metrics = make_wsgi_app(registry)
        expected = f"Bearer {token}".encode()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO")
            if path in ("/health", "/ready"):
                up = path == "/health" or ready()
                start_response("200 OK" if up else "503 Service Unavailable", _TEXT)
                return [b"ok\n" if up else b"not ready\n"]
            if path == "/metrics":
                given = str(environ.get("HTTP_AUTHORIZATION", "")).strip().encode()
                if token and not hmac.compare_digest(given, expected):
                    start_response(
                        "401 Unauthorized",
                        [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
                    )
                    return [b"bearer token required\n"]
                result: Iterable[bytes] = metrics(environ, start_response)
                return result
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"see /metrics\n"]

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        server = make_server(host, port, app, Server, handler_class=_Quiet)
        thread = threading.Thread(target=server.serve_forever, name="llmq-metrics", daemon=True)
        thread.start()
        return cls(server, thread, host)

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Blocks until the serving thread ended and the port is closed."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)
