"""A headless browser per test module of the console (see browser.py), and a Redis-compatible
server of the console's own: its pages list every tenant, so another test's deliberately
corrupted tenant in the session's server must not show up here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmq.embedded import EmbeddedRedis
from tests.console.browser import start_browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("console-redis")))
    yield server
    server.stop()
