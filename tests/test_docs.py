"""The docs run as written: every code block of README.md and docs/*.md marked with an HTML
comment `<!-- runnable -->` (or `<!-- runnable expect="text" -->`, which also asserts that
`text` is printed) just before it runs against a real `llmq dev`, started here on free ports.

A block runs as a reader would run it after `make dev`, in a fresh directory, in a shell
where `source .venv/bin/activate` was done and the variables `llmq dev` prints are exported
(`LLMQ_KEY`, `LLMQ_NATS_URL` with `LLMQ_NATS_TOKEN_FILE`, `LLMQ_REDIS_URL` with
`LLMQ_REDIS_PASSWORD_FILE`). The one change made to a block: the docs' port 8000 becomes
the test's free port. `sh` blocks run with `bash -eo pipefail`, `python` blocks with the
venv's python; each must exit 0 and print no OpenAI error object (`"error": {`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmq.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(
    r'^<!-- runnable(?: expect="(?P<expect>[^"]*)")? -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```$',
    re.M | re.S,
)


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    code: str
    expect: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def runnable_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in MARK.finditer(text):
            blocks.append(
                Block(
                    doc=str(path.relative_to(ROOT)),
                    line=text[: match.start()].count("\n") + 1,
                    lang=match["lang"],
                    code=match["code"],
                    expect=match["expect"] or "",
                )
            )
    return blocks


BLOCKS = runnable_blocks()


def test_the_marked_blocks_are_found() -> None:
    """The marker is spelt the same everywhere: a misspelt one would silently skip a block."""
    marks = sum(path.read_text().count("<!-- runnable") for path in DOCS)
    assert marks == len(BLOCKS) and {b.lang for b in BLOCKS} <= {"sh", "python"}
    assert {b.doc for b in BLOCKS} >= {"README.md", "docs/tenants.md", "docs/batch.md"}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`llmq dev` on free ports, started as `make dev` does, and the environment of a reader's
    activated shell with the variables its banner printed."""
    venv = Path(sys.executable).parent
    if not (venv / "llmq").exists() or not (venv / "activate").exists():
        pytest.skip("run the tests in the project's venv (make test)")
    root = tmp_path_factory.mktemp("docs-dev")
    port = free_port()
    log = root / "dev.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "llmq"), "dev", "--port", str(port), "--nats-port", str(free_port()),
             "--redis-port", str(free_port()), "--data-dir", str(root / "data")],
            cwd=ROOT, env=clean, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        printed = dict(re.findall(r"\b(LLMQ_[A-Z_]+)=(\S+)", text))
        key = re.search(r"API key \(tenant dev\) +(\S+)", text).group(1)  # type: ignore[union-attr]
        env = {
            **clean,
            "VIRTUAL_ENV": str(venv.parent),
            "PATH": f"{venv}:/usr/bin:/bin",
            "LLMQ_KEY": key,
            **{name: printed[name] for name in (
                "LLMQ_NATS_URL", "LLMQ_NATS_TOKEN_FILE", "LLMQ_REDIS_URL",
                "LLMQ_REDIS_PASSWORD_FILE",
            )},
        }  # fmt: skip
        yield port, env, venv
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_the_block_runs_as_written(block: Block, dev: Any, tmp_path: Path) -> None:
    port, env, venv = dev
    code = re.sub(r"(127\.0\.0\.1|localhost):8000\b", rf"\g<1>:{port}", block.code)
    if block.lang == "sh":
        argv = ["bash", "-eo", "pipefail", "-c", code]
    else:
        argv = [str(venv / "python"), "-c", code]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    said = f"{block}:\n{block.code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, said
    assert '"error":{' not in done.stdout.replace(" ", ""), said
    assert block.expect in done.stdout, said


def test_the_redis_keys_in_docs_tenants_are_the_codes() -> None:
    """docs/tenants.md names the keys `schemas/names/keys.py` makes, hash tags included."""
    from llmq.schemas import names

    text = (ROOT / "docs" / "tenants.md").read_text()
    made = [
        names.TENANTS_KEY, names.PRICES_KEY, names.DELETED_SCOPES_KEY, names.LEDGER_KEY,
        names.tenant_key("acme"), names.tenant_api_keys_key("acme"),
        names.key_last_used_key("acme"), names.inflight_key("acme"), names.rate_key("acme"),
        names.tenant_ledger_key("acme"), names.api_key_key("<sha256>"),
        names.day_quota_key("acme", "<day>"), names.month_quota_key("acme", "<month>"),
        names.reservation_key("acme", "<job>"), names.usage_key("acme", "<day>"),
        names.usage_by_key("acme", "<day>", "key"), names.key_quota_prefix("acme", "<key id>"),
        names.cache_entry_key("acme~<id>", "<sha256>"), names.cache_index_key("acme~<id>"),
        names.cache_sizes_key("acme~<id>"),
    ]  # fmt: skip
    assert [key for key in made if f"`{key}" not in text] == []
    assert "llmq:q:<tenant>" not in text and "llmq:usage:<tenant>" not in text
