"""The rooms of docs/architecture.md, checked: who may import whom, and module size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("api", "dispatcher", "worker", "schemas", "llmq")
# room -> rooms of llmq it must never import
FORBIDDEN = {
    "api": ("llmq.worker",),
    "worker": ("llmq.api",),
    "dispatcher": ("llmq.api", "llmq.worker"),
    "schemas": ("llmq.api", "llmq.worker", "llmq.dispatcher"),
}
MAX_LINES = 400


def _sources(room: str) -> list[Path]:
    return sorted(p for p in (ROOT / room).rglob("*.py") if not p.is_symlink())


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("room", ROOMS)
def test_imports_use_the_llmq_namespace(room: str) -> None:
    bare = ("api", "dispatcher", "worker", "schemas")
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _sources(room)
        for module in _imports(path)
        if any(_inside(module, b) for b in bare)
    ]
    assert not wrong, "import these as llmq.<room>:\n" + "\n".join(wrong)


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_only_what_they_may(room: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _sources(room)
        for module in _imports(path)
        if any(_inside(module, banned) for banned in FORBIDDEN[room])
    ]
    assert not wrong, (
        f"{room}/ must not import " + ", ".join(FORBIDDEN[room]) + ":\n" + "\n".join(wrong)
    )


def test_the_core_queue_needs_no_batch_import() -> None:
    core = [p for p in _sources("dispatcher") if "batch" not in p.relative_to(ROOT).parts]
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in core
        for module in _imports(path)
        if _inside(module, "llmq.dispatcher.batch")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_module_is_too_long_to_read_in_one_sitting() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for room in ROOMS
        for path in _sources(room)
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"split these (>{MAX_LINES} lines):\n" + "\n".join(long)
