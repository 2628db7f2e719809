"""`llmq tenants|keys|usage|prices` print tables for people (human times, `unlimited`, no
hashes) and the records as JSON with `--json`; a mistake is one sentence naming the flag or
setting — against a real Valkey."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from llmq.api.tenancy import Quota, connect
from llmq.cli import main
from llmq.embedded import EmbeddedRedis
from tests.stack import unique


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def url(redis_server: EmbeddedRedis) -> list[str]:
    return ["--redis-url", redis_server.url]


def _row(lines: list[str], first: str) -> list[str]:
    (row,) = [line for line in lines if line.split()[:1] == [first]]
    return row.split()


def test_tenants_as_a_table_a_card_and_json(capsys, url) -> None:  # type: ignore[no-untyped-def]
    name = unique("acme")
    code, out, err = run(
        capsys, "tenants", "create", name, "--rpm", "600", "--models", "echo", *url
    )
    assert code == 0, err
    card = dict(line.split(None, 1) for line in out.splitlines() if "  " in line)
    assert card["name"].strip() == name and card["rpm"].strip() == "600"
    assert "tpm" in out and "unlimited" in out and "created" in out
    assert " UTC (" in out  # a human time, never a unix float
    code, out, _ = run(capsys, "tenants", "list", *url)
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME", "STATUS", "PRIORITY", "RPM", "TPM", "CONCURRENT", "MODELS", "CREATED",
    ]  # fmt: skip
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert _row(lines, name) == [name, "active", "normal", "600", "unlimited", "unlimited",
                                 "echo", today]  # fmt: skip
    # --json keeps the records as they are (scripts rely on them)
    code, out, _ = run(capsys, "tenants", "list", "--json", *url)
    (mine,) = [t for t in json.loads(out) if t["name"] == name]
    assert mine["rpm"] == 600 and mine["tpm"] == 0 and isinstance(mine["created_at"], float)
    code, out, _ = run(capsys, "tenants", "suspend", name, "--json", *url)
    assert json.loads(out)["status"] == "suspended"
    code, out, _ = run(capsys, "tenants", "delete", name, *url)
    assert (code, out) == (0, f"deleted tenant {name}\n")


def test_keys_table_has_no_hash_and_says_when(capsys, url) -> None:  # type: ignore[no-untyped-def]
    name = unique("keys")
    assert run(capsys, "tenants", "create", name, *url)[0] == 0
    code, out, err = run(
        capsys, "keys", "create", name, "--label", "ci", "--rpm", "60", "--expires-in", "30d", *url
    )
    assert code == 0, err
    key = out.splitlines()[0].split()[1]
    assert key.startswith("sk-llmq-") and "shown this once" in out
    assert "sha256" not in out
    code, out, _ = run(capsys, "keys", "create", name, "--json", *url)
    created = json.loads(out)
    assert created["key"].startswith("sk-llmq-") and len(created["sha256"]) == 64
    code, out, _ = run(capsys, "keys", "list", name, *url)
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "PREFIX", "LABEL", "OWNER"]
    assert "sha256" not in out.lower() and created["sha256"] not in out
    assert key not in out  # the secret is never listed; its prefix is
    ci = next(line for line in lines if " ci " in line)
    assert "rpm 60" in ci and "in 30d" in ci and ci.rstrip().endswith("never")
    other = next(line for line in lines if created["id"] in line)
    assert "tenant's" in other  # no limits of its own
    code, out, _ = run(capsys, "keys", "list", name, "--json", *url)
    assert {k["id"] for k in json.loads(out)} >= {created["id"]}
    assert all("sha256" in k for k in json.loads(out))  # the JSON shape is kept
    code, out, _ = run(capsys, "keys", "revoke", name, created["id"], *url)
    assert out == f"revoked key {created['id']} of {name}\n"


async def _book(url: str, tenant: str, key_id: str) -> None:
    redis = connect(url, timeout=10.0)
    try:
        quota = Quota(redis)
        for n, user in enumerate(("alice", "bob", "alice")):
            job = uuid.uuid4().hex
            decision = await quota.reserve(tenant, "echo", 10, 5, job, key_id=key_id, user=user)
            assert decision.allowed
            assert await quota.release(tenant, "echo", job, 10, 5 + n)
    finally:
        await redis.aclose()


def test_usage_by_user_names_the_user_column(capsys, url, redis_server) -> None:  # type: ignore[no-untyped-def]
    name = unique("usage")
    assert run(capsys, "tenants", "create", name, *url)[0] == 0
    code, out, _ = run(capsys, "keys", "create", name, "--json", *url)
    key_id = json.loads(out)["id"]
    asyncio.run(_book(redis_server.url, name, key_id))
    today = time.strftime("%Y-%m-%d", time.gmtime())

    code, out, err = run(capsys, "usage", name, "--by", "user", *url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "DAY", "USER", "REQUESTS", "FAILED", "PROMPT", "CACHED", "COMPLETION", "COST", "USD",
    ]  # fmt: skip
    assert lines[1].split()[:3] == [today, "alice", "2"]
    assert [ln.split()[1] for ln in lines[1:-1]] == ["alice", "bob"]
    assert lines[-1].split()[:2] == ["total", "3"]
    code, out, _ = run(capsys, "usage", name, "--by", "key", *url)
    assert out.splitlines()[0].split()[1] == "KEY" and key_id in out
    code, out, _ = run(capsys, "usage", name, *url)
    assert out.splitlines()[0].split()[1] == "MODEL" and _row(out.splitlines(), today)[1] == "echo"
    code, out, _ = run(capsys, "usage", name, "--by", "user", "--json", *url)
    rows = json.loads(out)
    assert {(r["model"], r["requests"]) for r in rows} == {("alice", 2), ("bob", 1)}


def test_prices_table(capsys, url) -> None:  # type: ignore[no-untyped-def]
    model = unique("priced")
    code, out, err = run(capsys, "prices", "set", model, "--input", "0.15", "--output", "0.6", *url)
    assert code == 0, err
    header = ["MODEL", "INPUT", "OUTPUT", "CACHED", "INPUT", "CACHE", "WRITE"]
    assert out.splitlines()[0].split() == header
    assert _row(out.splitlines(), model) == [model, "0.15", "0.6", "=", "input", "=", "input"]
    code, out, _ = run(capsys, "prices", "list", "--json", *url)
    assert json.loads(out)[model] == {
        "input_per_1m": 0.15, "output_per_1m": 0.6,
        "cached_input_per_1m": None, "cache_write_per_1m": None,
    }  # fmt: skip
    code, out, _ = run(capsys, "prices", "delete", model, *url)
    assert out == f"deleted the price of {model}\n"


def test_a_bad_tenant_name_or_limit_is_one_sentence(capsys, url) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, "tenants", "create", "no spaces please", *url)
    assert code == 1 and out == ""
    assert err == (
        "llmq: tenant name 'no spaces please' is not valid: use 1 to 64 letters, digits, '.', "
        "'_', '@' or '-', starting with a letter or digit\n"
    )
    code, _, err = run(capsys, "tenants", "create", unique("neg"), "--rpm", "-5", *url)
    assert code == 1 and err == "llmq: --rpm is not valid: expected int >= 0\n"
    code, _, err = run(capsys, "prices", "set", unique("p"), "--output", "-1", *url)
    assert code == 1 and err == "llmq: --output is not valid: expected float >= 0.0\n"
    name = unique("exp")
    assert run(capsys, "tenants", "create", name, *url)[0] == 0
    code, _, err = run(capsys, "keys", "create", name, "--expires-in", "soon", *url)
    assert code == 1 and err == (
        "llmq: --expires-in is not valid: not a duration: 'soon' (e.g. 3600, 30m, 12h, 30d)\n"
    )
    code, _, err = run(capsys, "keys", "create", name, "--cache-ttl", "soon", *url)
    assert code == 1 and err == (
        "llmq: --cache-ttl is not valid: not a duration: 'soon' (e.g. 3600, 30m, 12h, 30d)\n"
    )
    code, _, err = run(capsys, "usage", unique("nobody"), *url)
    assert code == 1 and "does not exist (see `llmq tenants list`)" in err


def test_a_key_with_a_cache_ttl(capsys, url) -> None:  # type: ignore[no-untyped-def]
    name = unique("cached")
    assert run(capsys, "tenants", "create", name, *url)[0] == 0
    code, out, _ = run(capsys, "keys", "create", name, "--cache-ttl", "1h", "--json", *url)
    assert code == 0 and json.loads(out)["cache_ttl"] == 3600
    code, out, _ = run(capsys, "keys", "list", name, "--json", *url)
    assert [k["cache_ttl"] for k in json.loads(out)] == [3600]


@pytest.mark.parametrize(
    ("argv", "command", "hint"),
    [
        (["keys", "list", "acme", "--rmp", "5"], "llmq keys", "--rmp (did you mean --rpm?)"),
        (["tenants", "list", "--jsno"], "llmq tenants", "--jsno (did you mean --json?)"),
        (["jobs", "--wdie"], "llmq jobs", "--wdie (did you mean --wide?)"),
        (["redis", "migrate-keys", "--dryrun"], "llmq redis migrate-keys", "--dry-run?"),
    ],
)
def test_an_unknown_flag_prints_that_commands_usage(capsys, argv, command, hint) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"usage: {command} ")
    assert f"{command}: error: unrecognized arguments: " in err and hint in err


PASSWORD = "pw-" + uuid.uuid4().hex


@pytest.fixture
def locked_redis(tmp_path: Path) -> Any:
    server = EmbeddedRedis(tmp_path / "redis", password=PASSWORD)
    yield server
    server.stop()


def _llmq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_redis_auth_failures_name_the_setting(locked_redis: Any) -> None:
    shown = locked_redis.url
    wrong = _llmq("tenants", "list", LLMQ_REDIS_URL=shown, LLMQ_REDIS_PASSWORD="not-" + PASSWORD)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr == (
        f"llmq: Redis at {shown} refused the password: check LLMQ_REDIS_PASSWORD, "
        "LLMQ_REDIS_PASSWORD_FILE or the password in LLMQ_REDIS_URL\n"
    )
    missing = _llmq("keys", "list", "acme", LLMQ_REDIS_URL=shown)
    assert missing.returncode == 2
    assert missing.stderr == (
        f"llmq: Redis at {shown} requires a password: set LLMQ_REDIS_PASSWORD or "
        "LLMQ_REDIS_PASSWORD_FILE (or put it in LLMQ_REDIS_URL)\n"
    )
    in_url = shown.replace("redis://", f"redis://:wrong-{PASSWORD}@")
    wrong_url = _llmq("usage", "acme", LLMQ_REDIS_URL=in_url)
    assert (
        wrong_url.returncode == 2 and f"Redis at {shown} refused the password" in wrong_url.stderr
    )
    for out in (wrong, missing, wrong_url):
        assert PASSWORD not in out.stderr + out.stdout
