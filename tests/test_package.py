"""What the `llmq` package ships: only what the `llmq` command runs. A module that only the
tests or the benches import (servers for tests, fixtures, fakes) lives under `tests/`; the
package never imports `tests` or `bench`."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from tests.source import parse

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmq"
ENTRY_POINT = "llmq.cli"
"""`[project.scripts] llmq = "llmq.cli:main"`: everything the package runs starts there."""


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name, through the links to api/, dispatcher/,
    worker/ and schemas/."""
    found = {}
    for folder, _dirs, files in os.walk(PACKAGE, followlinks=True):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = Path(folder) / file
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path) -> set[str]:
    """The names `path` imports anywhere (functions' lazy imports too, and `"llmq.x:y"`
    strings that name a module for uvicorn or importlib)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("llmq."):
                names.add(node.value.partition(":")[0])
    return names


def _reachable(modules: dict[str, Path]) -> set[str]:
    seen: set[str] = set()
    todo = [ENTRY_POINT]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _imported(name, modules[name]):
            while imported:  # `a.b.c` loads `a.b.c` if a module, and its packages
                if imported in modules:
                    todo.append(imported)
                imported = imported.rpartition(".")[0]
    return seen


def test_every_module_of_the_package_is_run_by_the_llmq_command() -> None:
    modules = _modules()
    assert ENTRY_POINT in modules and len(modules) > 100, sorted(modules)[:5]
    unused = sorted(set(modules) - _reachable(modules))
    assert not unused, f"only tests or benches use these; move them under tests/: {unused}"


def test_the_package_never_imports_the_tests_or_the_benches() -> None:
    modules = _modules()
    offenders = {
        name: sorted(n for n in _imported(name, path) if n.split(".")[0] in ("tests", "bench"))
        for name, path in modules.items()
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_the_check_sees_a_module_only_the_tests_import(tmp_path: Path) -> None:
    """The walk itself: a module nobody in the package imports is reported."""
    modules = _modules()
    stray = tmp_path / "stray.py"
    stray.write_text("from llmq.embedded import EmbeddedRedis\n")
    modules["llmq.stray"] = stray
    assert "llmq.stray" not in _reachable(modules)
    assert "llmq.embedded" in _reachable(modules)  # `llmq dev` runs the embedded servers
