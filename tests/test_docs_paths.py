"""No doc and no comment names a file that does not exist: every repository path the docs,
the READMEs and the code's comments and docstrings name (`api/sse.py`, `bench/compare.py`,
`docs/operations.md`, `tests/redis_ha.py`, a bare `README.md`) is in the tree. A module
that moves takes the sentences that name it along."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("api", "bench", "compose", "dispatcher", "docs", "llmq", "schemas", "tests", "worker")
SUFFIXES = "py|md|lua|toml|ya?ml|sh|conf|json|jsonl|png|txt|html|js|css"
NAMED = re.compile(
    rf"(?<![\w/.-])((?:{'|'.join(TOP)})/[\w./-]*\w\.(?:{SUFFIXES}))\b"  # a path from the top
    r"|(?<![\w/.-])([A-Z][A-Z_]+\.md)\b"  # README.md, ...
)
"""A repository path as the docs write it: from a top-level folder, or a bare capitalised
markdown file (at the top, or in docs/). Paths inside other projects (`asyncio/tasks.py`)
do not start with one of ours."""


def _texts() -> list[Path]:
    """The docs, the READMEs and every source file of ours (the links in llmq/ are walked
    once, as api/, dispatcher/, worker/ and schemas/)."""
    files = [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("compose/**/*.md")]
    files += [ROOT / "pyproject.toml", ROOT / "Makefile"]
    for top in TOP:
        folder = ROOT / top
        if folder.is_symlink() or not folder.is_dir():
            continue
        for suffix in ("py", "lua", "toml", "yml", "yaml", "sh"):
            files += [p for p in folder.rglob(f"*.{suffix}") if not p.is_symlink()]
    return sorted(set(files) - {Path(__file__).resolve()})  # its own probes name no file


MADE_BY_BUILD = {
    "tests/js/node_modules/.package-lock.json": "the Makefile's stamp: `npm ci` writes it",
    "tests/js_openai/node_modules/.package-lock.json": "the Makefile's stamp, likewise",
}
"""Paths that are named on purpose though not in the tree, and why."""


def _exists(name: str) -> bool:
    return name in MADE_BY_BUILD or (ROOT / name).exists() or (ROOT / "docs" / name).exists()


def missing_paths(text: str, where: str) -> list[str]:
    """`where:line: path` for each path `text` names that is not in the tree."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in NAMED.finditer(line):
            name = match.group(1) or match.group(2)
            if not _exists(name):
                out.append(f"{where}:{number}: {name}")
    return out


def test_every_path_a_doc_or_comment_names_exists() -> None:
    files = _texts()
    assert ROOT / "docs" / "benchmarks.md" in files and ROOT / "llmq" / "cli.py" in files
    missing = [
        where
        for path in files
        for where in missing_paths(
            path.read_text(encoding="utf-8", errors="replace"), str(path.relative_to(ROOT))
        )
    ]
    assert not missing, "named but not in the tree:\n" + "\n".join(missing)


def test_the_check_sees_a_path_that_is_not_there() -> None:
    text = (
        "`api/sse.py`, (docs/operations.md), tests/redis_ha.py, `asyncio/tasks.py`, README.md\n"
        "`api/no_such_module.py` and DESIGN.md and `bench/gone.py`\n"
    )
    assert missing_paths(text, "probe.md") == [
        "probe.md:2: api/no_such_module.py",
        "probe.md:2: DESIGN.md",
        "probe.md:2: bench/gone.py",
    ]
