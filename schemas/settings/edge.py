"""Settings of the api's HTTP edge: what a connection and a caller meet before any tenant
work (api/edge.py, docs/security.md)."""

from __future__ import annotations

from typing import ClassVar

from llmq.schemas.settings.base import Command, Group, setting


class EdgeSettings(Group):
    """Limits of every client connection, the pacing of list calls, the docs page."""

    commands: ClassVar[tuple[Command, ...]] = ("api",)

    max_header_bytes: int = setting(
        65_536,
        "Largest request line plus headers accepted; more gets a 431 and the connection closes.",
        ge=1024,
    )
    max_header_count: int = setting(
        100, "Most header fields in one request; more gets a 431.", ge=8
    )
    header_timeout: float = setting(
        10.0,
        "Seconds from a connection (or a request's first byte) to the end of its headers; "
        "later gets a 408 and the connection closes.",
        gt=0,
    )
    body_timeout: float = setting(
        30.0,
        "Seconds the api waits for the next part of a request body it is reading; later "
        "gets a 408 and the connection closes.",
        gt=0,
    )
    max_connections: int = setting(
        4096,
        "Client connections open at once (capped by the file-descriptor limit less 256); each "
        "one past it gets a 503 and is closed.",
        ge=1,
    )
    keep_alive_timeout: float = setting(
        75.0,
        "Seconds an idle keep-alive connection stays open. Longer than the idle time of the "
        "clients and load balancers in front (httpx 5 s, Node 4-5 s, aiohttp 15 s, AWS ALB "
        "60 s): a client that reuses an idle connection the api closed meanwhile gets a "
        "connection reset.",
        gt=0,
    )
    docs: bool = setting(
        False,
        "Serve Swagger UI at /docs (the page loads its script and style from a public CDN); "
        "/openapi.json is served either way.",
    )
    list_concurrency: int = setting(
        4,
        "List calls (GET /v1/files, /v1/jobs, /v1/batches) one tenant may have open at once "
        "on one api replica; more get a 429. Each also counts against the RPM.",
        ge=1,
    )
