"""Where NATS and Redis/Valkey are, and how api and worker reach them: URLs, timeouts,
Sentinels, credentials and TLS (docs/security.md)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import field_validator
from pydantic_settings import NoDecode

from llmq.schemas.settings.base import Command, Group, setting, split_commas


class ConnectionSettings(Group):
    """Where NATS and Redis/Valkey are; api and worker both connect."""

    commands: ClassVar[tuple[Command, ...]] = ("api", "worker")

    nats_url: str = setting("nats://127.0.0.1:4222", "NATS server(s), comma-separated.")
    nats_connect_timeout: float = setting(
        5.0, "Seconds one attempt to reach a NATS server may take.", commands=()
    )
    startup_timeout: float = setting(
        300.0,
        "Seconds a process keeps retrying, with backoff, its first contact with NATS and its "
        "streams, consumers and buckets (a server still starting, a cluster still forming, "
        "a stream not provisioned yet) before it gives up and exits; 0 = forever.",
        commands=(),
        ge=0,
    )
    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis or Valkey URL.")
    redis_timeout: float = setting(
        1.0, "Seconds before a Redis command counts as down.", commands=()
    )
    redis_sentinels: Annotated[list[str], NoDecode] = setting(
        [],
        "Redis Sentinels (`host:port`, comma-separated); when set, llmq asks them for the "
        "master of redis_sentinel_master instead of using redis_url, and follows a failover. "
        "Same as redis_url `redis+sentinel://h1:26379,h2:26379/<master>[/db]`.",
        commands=(),
    )
    redis_sentinel_master: str = setting(
        "mymaster", "Name the Sentinels monitor the master under.", commands=()
    )
    redis_sentinel_db: int = setting(0, "Database number on the Sentinel master.", commands=())
    fast_paths: bool = setting(
        True,
        "Use llmq's shortcuts into nats-py, redis-py and Starlette internals, each only on the "
        "library versions it was tested with (docs/operations.md); false takes every "
        "library's public path.",
        commands=(),
    )

    _split = field_validator("redis_sentinels", mode="before")(split_commas)
    # Credentials and TLS (docs/security.md). Environment or files only: never a flag.
    nats_creds: str = setting(
        "", "NATS credentials file (user JWT + nkey seed, as `nsc` writes it).", commands=()
    )
    nats_nkey: str = setting("", "File holding the NATS user's nkey seed (SU...).", commands=())
    nats_user: str = setting("", "NATS user name (with nats_password).", commands=())
    nats_password: str = setting(
        "", "NATS password; or give nats_password_file.", secret=True, repr=False
    )
    nats_password_file: str = setting("", "File holding the NATS password.", commands=())
    nats_token: str = setting(
        "", "NATS authentication token; or give nats_token_file.", secret=True, repr=False
    )
    nats_token_file: str = setting("", "File holding the NATS token.", commands=())
    nats_tls_ca: str = setting(
        "", "PEM file of the CA that signed the NATS server's certificate.", commands=()
    )
    nats_tls_cert: str = setting(
        "", "PEM client certificate for NATS (mutual TLS; with nats_tls_key).", commands=()
    )
    nats_tls_key: str = setting("", "PEM private key of nats_tls_cert.", commands=())
    nats_inbox_prefix: str = setting(
        "_INBOX",
        "Prefix of this process's own NATS reply subjects; give workers their own (e.g. "
        "`_INBOX_worker`) so their user needs no subscription on the api's `_INBOX.>`.",
        commands=(),
    )
    nats_provision: bool = setting(
        True,
        "Create the NATS streams, buckets and shared consumers this process needs at start "
        "(and after a reconnect); false where `llmq provision` makes them and this process's "
        "NATS user may not (docs/security.md): it then waits for them, naming what is missing.",
        commands=(),
    )
    redis_password: str = setting(
        "",
        "Redis/Valkey password (AUTH), used when redis_url carries none; or give "
        "redis_password_file.",
        secret=True,
        repr=False,
    )
    redis_password_file: str = setting("", "File holding the Redis password.", commands=())
    redis_sentinel_password: str = setting(
        "",
        "Password of the Redis Sentinels themselves (their `requirepass`), used to ask them "
        "for the master; the data nodes keep redis_password. Or give "
        "redis_sentinel_password_file.",
        secret=True,
        repr=False,
    )
    redis_sentinel_password_file: str = setting(
        "", "File holding the Redis Sentinels' password.", commands=()
    )
    redis_tls_ca: str = setting(
        "", "PEM CA file to verify the Redis server (with a `rediss://` redis_url).", commands=()
    )

    def secret(self, name: str) -> str:
        """`name`'s value, else the stripped content of the file `<name>_file` names."""
        value = str(getattr(self, name))
        path = str(getattr(self, f"{name}_file"))
        if value or not path:
            return value
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
