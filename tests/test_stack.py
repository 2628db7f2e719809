"""The suite's own ways of getting a port hold on a busy machine, where another process can
take a port between the moment it was found free and the moment a server binds it."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from tests import stack as stack_module
from tests.stack import refused_port


def _listener() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


async def test_an_api_process_whose_port_was_taken_starts_again_on_another(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    taker, taken = _listener()
    real = stack_module.free_port
    ports = iter([taken])
    monkeypatch.setattr(stack_module, "free_port", lambda: next(ports, None) or real())
    try:
        api = await stack.api_process()
    finally:
        taker.close()
    first, second = stack.processes
    assert first.proc.returncode == 3 and "address already in use" in first.output()
    assert second is api and api.port not in (0, taken) and api.proc.poll() is None
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{api.url}/health")).status_code == 200


async def test_an_api_process_is_ready_at_any_log_level(stack: Any) -> None:
    """Readiness is the api's own `/health`, not a start-up line a quieter level hides."""
    api = await stack.api_process(log_level="WARNING")
    assert api.proc.poll() is None and "Uvicorn running" not in api.output()
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{api.url}/health")).status_code == 200


async def test_an_in_process_api_listens_on_the_socket_bound_for_it(stack: Any) -> None:
    api = await stack.api()
    assert api.sock.getsockname()[1] == api.settings.api.port
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{api.url}/health")).status_code == 200


def test_a_refused_port_refuses_and_nobody_else_can_listen_there() -> None:
    port = refused_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    other = socket.socket()
    with pytest.raises(OSError, match="in use"):
        other.bind(("127.0.0.1", port))
    other.close()
