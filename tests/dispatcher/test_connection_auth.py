"""Every process reaches a NATS that demands credentials or TLS through `connect`: with the
right ones api + worker serve a chat request through the official SDK; with none or wrong
ones the process stops at once with a clear message (never hangs, never shows the secret)."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import nkeys
import openai
import pytest

from llmq.api.runtime import Runtime
from llmq.dispatcher.connection import NatsRefused, connect, disconnect, redact_url
from llmq.schemas.settings import ConnectionSettings
from llmq.worker.main import Worker
from tests.stack import settings, unique, wait_for

TOKEN = "tok-" + uuid.uuid4().hex
PASSWORD = "pw-" + uuid.uuid4().hex


def _nkey_seed(tmp_path: Path) -> tuple[Path, str]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = tmp_path / "user.nk"
    path.write_bytes(seed)
    return path, nkeys.from_seed(seed).public_key.decode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (ed25519-nkey) as `nsc` would issue it."""
    claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
              "sub": subject, "jti": uuid.uuid4().hex.upper(), "nats": nats}  # fmt: skip
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


def _keypair(prefix: int) -> Any:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _creds(path: Path, account: Any) -> Path:
    """A `.creds` file: a user JWT signed by `account` and the user's seed."""
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    claims = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
              "type": "user", "version": 2}  # fmt: skip
    token = _jwt(account, user.public_key.decode(), "llmq", claims)
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return path


def _operator_mode(tmp_path: Path) -> tuple[str, Path, Path]:
    """Decentralized auth: an operator, a system account, the llmq account (JetStream on),
    its user's creds, and creds signed by an account the server does not know."""
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account, system = _keypair(nkeys.PREFIX_BYTE_ACCOUNT), _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    limits: dict[str, Any] = {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                              "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    op_jwt = _jwt(operator, operator.public_key.decode(), "op", {"type": "operator", "version": 2})
    accounts = {
        account.public_key.decode(): _jwt(operator, account.public_key.decode(), "llmq",
            {"limits": {**limits, **jetstream}, "type": "account", "version": 2}),
        system.public_key.decode(): _jwt(operator, system.public_key.decode(), "SYS",
            {"limits": limits, "type": "account", "version": 2}),
    }  # fmt: skip
    preload = ", ".join(f'{key}: "{token}"' for key, token in accounts.items())
    config = (
        f'operator: "{op_jwt}"\nsystem_account: {system.public_key.decode()}\n'
        f"resolver: MEMORY\nresolver_preload: {{ {preload} }}\n"
    )
    stranger = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    return config, _creds(tmp_path / "llmq.creds", account), _creds(tmp_path / "x.creds", stranger)


def _case(name: str, tmp_path: Path, pki: Any) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """(server config, the right client settings, wrong client settings)."""
    if name == "token":
        config = f'authorization {{ token: "{TOKEN}" }}'
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        return config, {"nats_token_file": str(token_file)}, [{}, {"nats_token": "nope"}]
    if name == "user_password":
        config = f'authorization {{ users: [{{user: llmq, password: "{PASSWORD}"}}] }}'
        return (
            config,
            {"nats_user": "llmq", "nats_password": PASSWORD},
            [{}, {"nats_user": "llmq", "nats_password": "wrong"}],
        )
    if name == "nkey":
        seed_file, public = _nkey_seed(tmp_path)
        other_seed, _ = _nkey_seed(tmp_path / "other")
        config = f"authorization {{ users: [{{nkey: {public}}}] }}"
        return config, {"nats_nkey": str(seed_file)}, [{}, {"nats_nkey": str(other_seed)}]
    if name == "creds":
        config, good_creds, stranger_creds = _operator_mode(tmp_path)
        return config, {"nats_creds": str(good_creds)}, [{}, {"nats_creds": str(stranger_creds)}]
    assert name == "tls"
    config = (
        f'tls {{ cert_file: "{pki.server}", key_file: "{pki.server_key}", '
        f'ca_file: "{pki.ca}", verify: true, timeout: 5 }}'
    )
    good = {
        "nats_tls_ca": str(pki.ca),
        "nats_tls_cert": str(pki.client),
        "nats_tls_key": str(pki.client_key),
    }
    return (
        config,
        good,
        [{}, {"nats_tls_ca": str(pki.ca)}, {**good, "nats_tls_ca": str(pki.other_ca)}],
    )


CASES = ["token", "user_password", "nkey", "creds", "tls"]


@pytest.mark.parametrize("case", CASES)
async def test_api_worker_and_sdk_through_secured_nats(
    case: str, tmp_path: Path, pki: Any, secured_nats: Any, stack: Any
) -> None:
    (tmp_path / "other").mkdir()
    config, good, _ = _case(case, tmp_path, pki)
    server = secured_nats(config)
    stack.nats_url = server.url
    model = unique(f"auth-{case}")
    api = await stack.api(**good)
    await stack.worker(model=[model], **good)
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=20)
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": f"through {case}"}], timeout=30
    )
    assert raw.http_response.status_code == 200
    reply = raw.parse()
    assert reply.choices[0].message.content == f"through {case}"
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "streamed"}], stream=True, timeout=30
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "streamed"


@pytest.mark.parametrize("case", CASES)
async def test_missing_or_wrong_credentials_stop_at_once(
    case: str, tmp_path: Path, pki: Any, secured_nats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "other").mkdir()
    config, _, bad_ones = _case(case, tmp_path, pki)
    server = secured_nats(config)
    for bad in bad_ones:
        conn = ConnectionSettings(nats_url=server.url, **bad)
        started = time.monotonic()
        with pytest.raises(NatsRefused) as refused:
            await connect(server.url, "test", timeout=2.0, conn=conn)
        assert time.monotonic() - started < 10, bad
        message = str(refused.value)
        assert f"NATS at {server.url} refused" in message
        assert TOKEN not in message and PASSWORD not in message and "nope" not in message
    # The processes themselves: the worker and the api stop with the same error.
    bad = settings(server.url, "redis://127.0.0.1:1/0", nats_connect_timeout=2.0, **bad_ones[-1])
    with pytest.raises(NatsRefused):
        await Worker(bad).start()
    with pytest.raises(NatsRefused):
        await Runtime.open(bad)
    assert TOKEN not in caplog.text and PASSWORD not in caplog.text


async def test_a_server_not_up_yet_is_still_waited_for(tmp_path: Path, secured_nats: Any) -> None:
    """Refusals stop a process; a NATS that is only late does not (compose starts all at once)."""
    from llmq.embedded import free_port

    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    conn = ConnectionSettings(nats_token=TOKEN)
    import asyncio

    task = asyncio.create_task(connect(url, "late", timeout=1.0, conn=conn))
    await asyncio.sleep(1.5)
    assert not task.done()
    from llmq.embedded import EmbeddedNats

    server = EmbeddedNats(
        tmp_path / "late", port=port, config=f'authorization {{ token: "{TOKEN}" }}'
    )
    try:
        nc = await asyncio.wait_for(task, 20)
        assert nc.is_connected
        await disconnect(nc)
    finally:
        server.stop()


def test_urls_are_logged_without_userinfo() -> None:
    assert (
        redact_url("nats://u:secret@h:4222, tls://t0ken@h2:4222") == "nats://h:4222,tls://h2:4222"
    )
    assert redact_url("redis://:pw@h:6379/0?password=x") == "redis://h:6379/0"
    assert redact_url("nats://h:4222") == "nats://h:4222"


def test_secrets_have_no_flag_and_never_show_in_repr(tmp_path: Path) -> None:
    from llmq.schemas.settings import Settings, leaves

    by_flat = {leaf.flat: leaf for leaf in leaves(Settings)}
    for name in ("nats_password", "nats_token", "redis_password"):
        assert by_flat[name].secret and not by_flat[name].commands
    for name in ("nats_creds", "nats_nkey", "nats_user", "nats_tls_key", "redis_password_file"):
        assert not by_flat[name].commands  # environment only
    conn = ConnectionSettings(nats_password=PASSWORD, nats_token=TOKEN, redis_password=PASSWORD)
    assert PASSWORD not in repr(conn) and TOKEN not in repr(conn)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    assert ConnectionSettings(redis_password_file=str(secret)).secret("redis_password") == PASSWORD
