"""Bytecode for the suite's many Python processes, written once before they start.

Where Python writes no bytecode (PYTHONDONTWRITEBYTECODE, as on CI machines), every process
the suite starts compiles what it imports again: each `llmq` process the sources it loads
(about 0.35 s on a slow machine), each pytest-xdist worker every source and test module and
pytest's rewrite of each test file's asserts (about 10 s of CPU before its first test).
`prepare` writes both kinds once, on all cores, before the workers start; later runs find
them up to date and pay only a stat per file. Bytecode is an optimisation only: where it
cannot be written, every process compiles in memory as before.
"""

from __future__ import annotations

import compileall
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("api", "dispatcher", "worker", "schemas", "llmq", "bench", "tests")
"""The project's own Python (`make test` once compiled these in a step of its own)."""
SKIP = re.compile(r"[/\\]node_modules[/\\]")
PYTEST_TESTED = "9."
"""The pytest major version whose assertion-rewrite internals `_rewrite` was tested with: on
any other, the workers rewrite in memory (pytest's public path)."""


def prepare() -> None:
    """Compile the project's sources and write pytest's rewrite of each test module (in the
    controller of an xdist run, before its workers start, or in the one process of `-n 0`)."""
    sys.dont_write_bytecode = False  # this process's own later imports too
    files = [
        path
        for folder in SOURCES
        for path in (ROOT / folder).rglob("*.py")
        if not SKIP.search(str(path))
    ]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_compile, files, chunksize=16))


def keep_rewritten_tests() -> None:
    """Let this process (an xdist worker) keep what it rewrites for the next run too."""
    sys.dont_write_bytecode = False


def _compile(path: Path) -> None:
    compileall.compile_file(path, quiet=2)
    if path.name == "conftest.py" or path.name.startswith("test_"):
        _rewrite(path)


def _rewrite(path: Path) -> None:
    """pytest's own rewrite of one test module, written where its import hook looks for it
    (pytest's internals: if they change, the workers rewrite in memory as before)."""
    if not pytest.__version__.startswith(PYTEST_TESTED):
        return
    try:
        from _pytest.assertion import rewrite

        pyc = rewrite.get_cache_dir(path) / (path.name[:-3] + rewrite.PYC_TAIL)
        if rewrite._read_pyc(path, pyc, lambda *_: None) is not None:
            return
        source_hash, code = rewrite._rewrite_test(path, None)  # type: ignore[arg-type]
        rewrite.try_makedirs(pyc.parent)
        quiet = SimpleNamespace(trace=lambda *_: None)
        rewrite._write_pyc(quiet, code, source_hash, pyc)  # type: ignore[arg-type]
    except Exception:
        return
