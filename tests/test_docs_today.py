"""The docs describe today, for users: no work-log language ("this round", "issue 14"), and
docs/benchmarks.md is the current results, one section per question, each with the command
that measures it and the date it was measured (the history of the figures is in git)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
MAX_BENCHMARK_LINES = 420
"""About 400 lines of text and tables (the current figures, not a notebook of every run):
a new figure replaces the one it updates, and a new question gets a short section."""

WORK_LOG = re.compile(
    r"\b(this|last|next|previous) (round(?! trip)|session)\b|\bissue \d+\b|\bbefore the fix\b",
    re.IGNORECASE,
)


def test_no_doc_reads_like_a_work_log() -> None:
    docs = [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("compose/**/*.md")]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {match.group(0)}"
        for path in docs
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        for match in WORK_LOG.finditer(line)
    ]
    assert not found, found


def _sections() -> dict[str, str]:
    text = BENCHMARKS.read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    return {part.splitlines()[0]: part for part in parts}


def test_benchmarks_are_current_results_one_question_each() -> None:
    lines = BENCHMARKS.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_BENCHMARK_LINES, lines
    sections = _sections()
    assert len(sections) >= 8, list(sections)
    for title, body in sections.items():
        assert title.rstrip().endswith("?") or title.startswith("Tail"), title
        assert re.search(r"bench/\w+\.py|-m bench\.\w+", body), f"{title}: no command"
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", body), f"{title}: no date"


def test_the_stack_the_brief_names_keeps_the_measurement_that_replaced_it() -> None:
    """Where llmq uses its own piece instead of the usual library, the figures that say why
    stay: the SSE writer, the upstream HTTP client, the hot routes, the Redis path."""
    text = BENCHMARKS.read_text(encoding="utf-8")
    for script, rival in (
        ("bench/sse_writer.py", "sse-starlette"),
        ("bench.upstream_client", "httpx"),
        ("bench/hot_routes.py", "FastAPI"),
        ("bench/quota_pipeline.py", "redis-py"),
        ("bench/publish_cpu.py", "nats-py"),
    ):
        assert script in text and rival in text, (script, rival)
