"""compose/ as deployed: NATS and Valkey publish no port and demand credentials; the worker
user of compose/nats/auth.conf can do its job (chat, async job, batch through a real
nats-server running that very file) and nothing else: it is refused the files, results,
tenant records and everyone else's replies.

Docker is not available here, so the YAML is parsed and checked, nats-server validates the
cluster config (`-t`), and the processes it would start run against the real permission
config."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmq.embedded import nats_server_binary, redis_server_binary

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
INBOXES = {
    "api": "_INBOX",
    "worker": "_INBOX_worker",
    "cli": "_INBOX_cli",
    "provision": "_INBOX_provision",
}
"""Each NATS user's own inbox prefix: the only one auth.conf lets it subscribe to."""


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What an operator runs before the first `up`: compose/make-secrets.sh."""
    out = Path(tmp_path_factory.mktemp("compose-secrets")) / "secrets"
    subprocess.run(["sh", str(COMPOSE / "make-secrets.sh"), str(out)], check=True, timeout=30)
    return out


def _users(secrets_dir: Path) -> dict[str, str]:
    text = (secrets_dir / "nats-users.conf").read_text()
    return dict(re.findall(r'LLMQ_(\w+)_PASSWORD: "([0-9a-f]+)"', text))


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return loaded


# --- the YAML --------------------------------------------------------------------------------


def test_no_nats_or_valkey_port_on_the_host_and_no_secret_in_the_file() -> None:
    services = compose()["services"]
    for name, service in services.items():
        ports = [str(p) for p in service.get("ports", [])]
        if name.startswith(("nats", "valkey")):
            assert not ports, f"{name} publishes {ports}"
        assert not any(p.split(":")[-1] in ("4222", "8222", "6222", "6379") for p in ports)
    assert [p for s in services.values() for p in s.get("ports", [])] == ["8000:8000", "8001:8000"]
    for name, service in services.items():
        env = service.get("environment", {})
        for key, value in env.items():
            if re.search(r"PASSWORD$|TOKEN$|_KEY$", key):
                assert str(value).startswith("${"), f"{name}: {key} is written in the file"
        assert "--nats-url" not in service.get("command", []), name
    raw = (COMPOSE / "docker-compose.yml").read_text()
    assert "requirepass" not in raw and "@nats-" not in raw and "@valkey" not in raw


NATS_USERS = {"api": "api", "worker": "worker", "provision": "provision", "cli": "cli"}
"""Service name prefix -> the NATS user of compose/nats/auth.conf it logs in as."""


def test_every_llmq_process_authenticates_with_compose_secrets() -> None:
    data = compose()
    services, declared = data["services"], data["secrets"]
    llmq = {n: s for n, s in services.items() if n.startswith(tuple(NATS_USERS))}
    assert {n.split("-")[0] for n in llmq} == set(NATS_USERS)
    for name, service in llmq.items():
        env = service["environment"]
        user = env["LLMQ_NATS_USER"]
        assert user == NATS_USERS[name.split("-")[0]], name
        secret_path = env["LLMQ_NATS_PASSWORD_FILE"]
        secret = secret_path.removeprefix("/run/secrets/")
        assert secret in service["secrets"] and secret in declared
        assert declared[secret]["file"].startswith("./secrets/")
        assert env.get("LLMQ_NATS_INBOX_PREFIX", "_INBOX") == INBOXES[user], name
        if user in ("api", "worker"):  # `llmq provision` made what they need
            assert env["LLMQ_NATS_PROVISION"] == "false", name
        if user == "api":
            assert env["LLMQ_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
            assert "redis_password" in service["secrets"]
            assert env["LLMQ_ADMIN_TOKEN_FILE"] == "/run/secrets/admin_token"
            assert "admin_token" in service["secrets"]
        else:
            assert not any(k.startswith("LLMQ_REDIS") for k in env)  # no Redis but the api's
            assert "redis_password" not in service["secrets"]
    valkey = services["valkey"]
    assert valkey["command"] == ["valkey-server", "/etc/valkey/valkey.conf"]
    assert "valkey_auth" in valkey["secrets"]
    assert "secrets/" in (COMPOSE / ".gitignore").read_text().split()


def test_the_cluster_config_is_valid_with_generated_secrets(
    secrets_dir: Path, tmp_path: Path
) -> None:
    etc = tmp_path / "etc-nats"
    etc.mkdir()
    for volume in compose()["services"]["nats-1"]["volumes"]:
        source, _, target = volume.partition(":")
        if source.startswith("./secrets/"):
            origin = secrets_dir / source.removeprefix("./secrets/")
        elif source.startswith("./"):
            origin = COMPOSE / source
        else:
            continue  # the data volume
        shutil.copy(origin, etc / Path(target.split(":")[0]).name)
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(etc / "nats.conf")],
        env={"NATS_NAME": "nats-1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    routes = (etc / "routes.conf").read_text()
    assert routes.count("nats-route://route:") == 3


def test_valkey_config_requires_the_generated_password(secrets_dir: Path, tmp_path: Path) -> None:
    import redis

    from llmq.embedded import free_port

    port = free_port()
    conf = (COMPOSE / "valkey.conf").read_text()
    conf = conf.replace("/run/secrets/valkey_auth", str(secrets_dir / "valkey_auth"))
    conf = conf.replace("dir /data", f"dir {tmp_path}")
    (tmp_path / "valkey.conf").write_text(conf)
    proc = subprocess.Popen(
        [redis_server_binary(), str(tmp_path / "valkey.conf"), "--port", str(port),
         "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        password = (secrets_dir / "redis_password").read_text().strip()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert redis.Redis(port=port, password=password).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
    finally:
        proc.terminate()
        proc.wait(10)
