"""The gates of llmq/_fast: open only inside the tested version range and with the switch on,
one log line when shut; and, shut, every caller takes its library's public path."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from redis.asyncio import BlockingConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from llmq import _fast as fast
from llmq._fast import nats as fast_nats
from llmq._fast import redis as fast_redis
from llmq._fast import starlette as fast_starlette
from llmq.api.hot_paths import HotPaths
from llmq.api.routes.plain import PlainRoute
from llmq.api.server import uvicorn_config
from llmq.api.startup import StartGate
from llmq.api.tenancy.client import connect as redis_connect
from llmq.api.tenancy.pipeline import ScriptPipe
from llmq.dispatcher.connection import connect, disconnect
from llmq.schemas.settings import Settings
from tests.stack import unique

ROOT = Path(__file__).resolve().parents[2]
GATES = (fast_nats.GATE, fast_redis.GATE, fast_starlette.GATE)


@pytest.fixture(autouse=True)
def _switch_back() -> Iterator[None]:
    yield
    fast.configure(None)


@pytest.mark.parametrize(
    ("version", "parsed"),
    [
        ("2.16.0", (2, 16, 0)),
        ("8.2", (8, 2)),
        ("2.17.0rc1", (2, 17, 0)),
        ("1.10.0+local", (1, 10, 0)),
        ("none", ()),
    ],
)
def test_versions_are_read_as_numbers(version: str, parsed: tuple[int, ...]) -> None:
    assert fast._parse(version) == parsed


@pytest.mark.parametrize(
    ("tested", "open_"),
    [
        ({"nats-py": ("0.1", "999")}, True),
        ({"nats-py": ("999", "1000")}, False),  # installed is older than tested
        ({"nats-py": ("0.1", "0.2")}, False),  # installed is newer than tested
        ({"no-such-distribution-llmq": ("0", "999")}, False),
    ],
)
def test_a_gate_is_open_only_inside_its_tested_range(
    tested: dict[str, tuple[str, str]], open_: bool, caplog: pytest.LogCaptureFixture
) -> None:
    fast.configure(True)
    gate = fast.Gate("sample", tested)
    try:
        with caplog.at_level(logging.INFO, logger="llmq.fast_paths"):
            assert gate.open is open_
            assert gate.open is open_  # checked once
        lines = [r.getMessage() for r in caplog.records if r.name == "llmq.fast_paths"]
        assert len(lines) == (0 if open_ else 1)
        if not open_:
            assert "outside the range" in lines[0] and "public path" in lines[0]
    finally:
        fast.Gate.every.remove(gate)


def _required() -> dict[str, SpecifierSet]:
    """pyproject's version range of each dependency."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {(r := Requirement(line)).name: r.specifier for line in project["dependencies"]}


def test_the_package_admits_exactly_the_tested_versions() -> None:
    """pip can only install what the gates were tested with, so a new release upstream never
    reaches an install (nor a fresh clone's `make test`) untested. To move on: run the suite
    with the new version, then widen the gate (llmq/_fast/<library>.py) and pyproject."""
    required = _required()
    for gate in GATES:
        for dist, (low, high) in gate.tested.items():
            assert required[dist] == SpecifierSet(f">={low},<{high}"), (dist, required[dist])


def test_the_installed_libraries_are_the_tested_ones() -> None:
    fast.configure(True)
    assert all(gate.open for gate in GATES), [g.library for g in GATES if not g.open]


@pytest.mark.parametrize("value", ["0", "false", "off", "no"])
def test_the_switch_shuts_every_gate(
    value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(fast.ENV, value)
    fast.configure(None)
    with caplog.at_level(logging.INFO, logger="llmq.fast_paths"):
        assert not any(gate.open for gate in GATES)
    assert sum("shortcuts off" in r.getMessage() for r in caplog.records) == len(GATES)
    fast.configure(True)  # the settings' value wins over the environment
    assert all(gate.open for gate in GATES)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_FAST_PATHS", "0")
    assert Settings().connection.fast_paths is False
    monkeypatch.delenv("LLMQ_FAST_PATHS")
    assert Settings().connection.fast_paths is True


async def _endpoint(request: Request) -> Response:
    return Response(b"ok")


@pytest.mark.parametrize("on", [True, False])
def test_starlette_shut_serves_the_app_and_ordinary_routes(on: bool) -> None:
    settings = Settings(fast_paths=on)
    config = uvicorn_config(settings)
    assert isinstance(config.app, StartGate)
    assert isinstance(config.app.app, HotPaths) is on
    route = PlainRoute("/x", _endpoint, methods=["POST"])
    assert isinstance(route, APIRoute)
    assert (route.get_route_handler() is _endpoint) is on


@pytest.mark.parametrize("on", [True, False])
async def test_redis_shut_uses_redis_pys_pool_and_no_pipe(on: bool, redis_server) -> None:  # type: ignore[no-untyped-def]
    fast.configure(on)
    client = redis_connect(redis_server.url)
    try:
        pool = client.connection_pool
        assert (type(pool) is BlockingConnectionPool) is not on
        assert issubclass(pool.connection_class, fast_redis.DirectWrite) is on
        assert ScriptPipe.serves(client) is on
        assert await client.incr(unique("gate")) == 1  # and it works either way
    finally:
        await client.aclose()


@pytest.mark.parametrize("on", [True, False])
async def test_nats_shut_takes_a_callback_and_nats_pys_headers(on: bool, nats_server) -> None:  # type: ignore[no-untyped-def]
    fast.configure(on)
    nc = await connect(nats_server.url, name="gate-test")
    try:
        assert ("_parse_header_lines" in vars(nc)) is on
        got: list[bytes] = []
        subject = unique("gate")
        sub = await fast_nats.subscribe_direct(nc, subject + ".>", lambda m: got.append(m.data))
        await nc.publish(subject + ".a", b"1", headers={"Llmq-Frame": "chunk"})
        await nc.flush()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == [b"1"]
        assert (type(sub._pending_queue).__name__ == "_Delivery") is on
        await sub.unsubscribe()
    finally:
        await disconnect(nc)
