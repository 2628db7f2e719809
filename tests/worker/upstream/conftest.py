"""Certificates for the TLS upstreams of these tests: made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.upstream.pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA: a client trusting only it must refuse `pki`'s server."""
    return make_pki(Path(tmp_path_factory.mktemp("pki-other")), "llmq-other")
