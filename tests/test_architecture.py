"""The rooms of docs/architecture.md, checked: who may import whom, what `dispatcher/` holds,
features kept apart, no import cycle, and module size."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.source import parse

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

# --- the import graph --------------------------------------------------------------------


def _sources(room: str) -> list[Path]:
    return sorted(p for p in (ROOT / room).rglob("*.py") if not p.is_symlink())


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] != "llmq":
        parts.insert(0, "llmq")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for room in ROOMS for p in _sources(room)}


def _imports(path: Path) -> list[str]:
    """Every absolute import of `path`, wherever it is (top level, in a function, under
    TYPE_CHECKING): `from a import b` counts as `a.b` when that is a module, else as `a`."""
    tree = parse(path)
    modules = _modules()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found.extend(sub for sub in subs if sub in modules)
            if not all(sub in modules for sub in subs):
                found.append(node.module)
    return found


@cache
def _graph() -> dict[str, frozenset[str]]:
    """llmq module -> the llmq modules it imports (its own package's `__init__` excluded)."""
    modules = _modules()
    graph: dict[str, frozenset[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = frozenset(targets)
    return graph


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _importers(target: str) -> set[str]:
    return {m for m, targets in _graph().items() if target in targets}


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# --- rooms -------------------------------------------------------------------------------


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


def test_no_import_cycle_anywhere() -> None:
    found = cycles(_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
        "e": frozenset({"e"}),
    }
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


# --- dispatcher/: the queue and nothing else ------------------------------------------------

BATCH_ENTRIES = {
    "llmq.dispatcher.batch.supervisor": "runs every batch whose lease is free (batch dispatch)",
    "llmq.dispatcher.batch.async_jobs": "queues async jobs on LLMQ_BATCH, cancels, expires them",
    "llmq.dispatcher.batch.collector": "follows the results of async and batch jobs",
}


def _queue_users(module: str) -> set[str]:
    """Who outside dispatcher/ uses `module`, directly or through dispatcher modules."""
    seen, todo, users = {module}, [module], set()
    while todo:
        for importer in _importers(todo.pop()):
            if _inside(importer, "llmq.dispatcher"):
                if importer not in seen:
                    seen.add(importer)
                    todo.append(importer)
            else:
                users.add(importer)
    return users


def _api_feature(module: str) -> str | None:
    """The feature subpackage of api/ that `module` belongs to, if any."""
    parts = module.split(".")
    if len(parts) > 3 and parts[1] == "api" and parts[2] not in API_SHARED:
        return parts[2]
    return None


def test_every_core_dispatcher_module_serves_a_process_queue_path() -> None:
    """A module of dispatcher/ (outside batch/) is used, directly or through other dispatcher
    modules, by the worker or by the api's shared machinery (api/ top level, engine/,
    tenancy/, routes/): not only by one api feature, and not only by the command line."""
    core = [
        m
        for m in _modules()
        if _inside(m, "llmq.dispatcher")
        and not _inside(m, "llmq.dispatcher.batch")
        and m != "llmq.dispatcher"
    ]
    wrong = []
    for module in sorted(core):
        users = _queue_users(module)
        if not any(
            _inside(u, "llmq.worker") or (_inside(u, "llmq.api") and _api_feature(u) is None)
            for u in users
        ):
            wrong.append(f"{module}: used only by {sorted(users) or 'nobody'}")
    assert not wrong, (
        "dispatcher/ holds the queue: move these to the feature or the command line that "
        "uses them (docs/architecture.md):\n" + "\n".join(wrong)
    )


def test_every_batch_dispatcher_module_serves_batch_dispatch() -> None:
    """A module of dispatcher/batch/ is one of its entries or is imported on their way."""
    batch = {m for m in _modules() if _inside(m, "llmq.dispatcher.batch")}
    reached, todo = set(BATCH_ENTRIES), list(BATCH_ENTRIES)
    while todo:
        for target in _graph()[todo.pop()]:
            if target in batch and target not in reached:
                reached.add(target)
                todo.append(target)
    stray = sorted(batch - reached - {"llmq.dispatcher.batch"})
    assert not stray, "not on the way of batch dispatch:\n" + "\n".join(stray)
    for entry in BATCH_ENTRIES:
        assert any(_inside(u, "llmq.api") for u in _importers(entry)), entry


def test_the_core_queue_needs_no_batch_import() -> None:
    core = [p for p in _sources("dispatcher") if "batch" not in p.relative_to(ROOT).parts]
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in core
        for module in _imports(path)
        if _inside(module, "llmq.dispatcher.batch")
    ]
    assert not wrong, "\n".join(wrong)


def test_dispatcher_needs_no_command_line() -> None:
    cli = {m for m in _modules() if m.count(".") == 1 and _inside(m, "llmq")} - {
        "llmq.api",
        "llmq.dispatcher",
        "llmq.worker",
        "llmq.schemas",
        "llmq._fast",
    }
    wrong = [
        f"{m}: {t}"
        for m, targets in _graph().items()
        if _inside(m, "llmq.dispatcher")
        for t in targets
        if t in cli
    ]
    assert not wrong, "\n".join(wrong)


# --- api/: one subpackage per feature --------------------------------------------------------

API_SHARED = frozenset({"engine", "tenancy", "routes"})
"""Subpackages of api/ that are shared machinery, not features; every other subpackage
(chat, responses, batch, console, and those to come: messages, cache, ...) is a feature."""
ASSEMBLERS = {
    "llmq.api.app": "the composition root: builds the app from its features",
    "llmq.api.hot_paths": "serves the hot routes ahead of the middleware stack, so it applies "
    "the console's security headers itself",
    "llmq.api.routes.admin": "the admin API accepts the console's session as well as the "
    "admin token",
}


def test_api_features_are_subpackages() -> None:
    features = {
        p.parent.name
        for p in (ROOT / "api").glob("*/__init__.py")
        if p.parent.name not in API_SHARED
    }
    assert {"chat", "responses", "batch", "console"} <= features


def test_shared_api_machinery_imports_no_feature() -> None:
    wrong = [
        f"{m}: {t}"
        for m, targets in _graph().items()
        if _inside(m, "llmq.api") and _api_feature(m) is None and m not in ASSEMBLERS
        for t in targets
        if _api_feature(t) is not None
    ]
    assert not wrong, (
        "shared api machinery must not depend on a feature (or list it in ASSEMBLERS "
        "with its reason):\n" + "\n".join(wrong)
    )


def _package(module: str) -> str:
    """Where a module's private names may be used: its api feature, else its package."""
    feature = _api_feature(module)
    if feature is not None:
        return f"llmq.api.{feature}"
    path = _modules()[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def test_no_module_imports_another_packages_private_names() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        tree = parse(path)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.module in modules):
                continue
            private = [
                a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
            ]
            if private and _package(node.module) != _package(name):
                wrong.append(f"{name}: {node.module}.{', '.join(private)}")
    assert not wrong, "make these public, or keep them in their package:\n" + "\n".join(wrong)


def test_no_module_is_too_long_to_read_in_one_sitting() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for room in ROOMS
        for path in _sources(room)
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"split these (>{MAX_LINES} lines):\n" + "\n".join(long)


# --- library shortcuts: only behind their gates (llmq/_fast) --------------------------------

LIBRARY_PRIVATE = frozenset(
    {
        # nats-py
        "_pending_queue", "_pending_size", "_parse_header_lines", "_send_publish",
        "_send_command", "_flush_queue", "_flush_pending", "_server_info", "_sub",
        "_HEADER_KEY_RE", "_HEADER_VALUE_NEWLINES",
        # redis-py
        "_in_use_connections", "_available_connections", "_in_maintenance",
        "_event_dispatcher", "_writer", "_reader",
        # FastAPI / Starlette
        "_native_telemetry", "_utils",
    }
)  # fmt: skip
"""Private names of nats-py, redis-py, FastAPI and Starlette that llmq's shortcuts use."""


def _private_uses(path: Path) -> list[str]:
    """Where `path` reaches for one of `LIBRARY_PRIVATE` on something not its own (`self`),
    by attribute, by `getattr`/`setattr` name, or by importing a private module."""
    found = []
    for node in ast.walk(parse(path)):
        name = None
        if isinstance(node, ast.Attribute) and node.attr in LIBRARY_PRIVATE:
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                name = node.attr
        elif isinstance(node, ast.Constant) and node.value in LIBRARY_PRIVATE:
            name = str(node.value)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if any(part.startswith("_") for part in node.module.split(".")[1:]):
                if node.module.split(".")[0] in ("nats", "redis", "starlette", "fastapi"):
                    name = node.module
        if name is not None:
            found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {name}")
    return found


def test_library_private_parts_are_touched_only_behind_a_gate() -> None:
    gates = ROOT / "llmq" / "_fast"
    wrong = [
        use
        for room in ROOMS
        for path in _sources(room)
        if gates not in path.parents
        for use in _private_uses(path)
    ]
    assert not wrong, (
        "move these into the library's gate module in llmq/_fast/ (with a public path for "
        "when the gate is shut):\n" + "\n".join(wrong)
    )


def test_the_private_check_sees_a_private_use(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from starlette._utils import is_async_callable\n"
        "q = sub._pending_queue\n"
        "w = getattr(conn, '_writer', None)\n"
        "own = self._writer\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        uses = _private_uses(sample)
    finally:
        ROOT = saved
    assert [u.rsplit(": ", 1)[1] for u in uses] == ["starlette._utils", "_pending_queue", "_writer"]


def test_the_gates_import_nothing_of_llmq_but_themselves() -> None:
    wrong = [
        f"{m}: {t}"
        for m, targets in _graph().items()
        if _inside(m, "llmq._fast")
        for t in targets
        if not _inside(t, "llmq._fast")
    ]
    assert not wrong, "\n".join(wrong)


# --- size by function ---------------------------------------------------------------------

MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 5
SIZE_EXCEPTIONS: dict[str, str] = {}
"""Where a function may pass the limits, and why."""


def _functions(path: Path) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    tree = parse(path)
    todo: list[tuple[str, ast.AST]] = [("", tree)]
    while todo:
        prefix, node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                todo.append((f"{prefix}{child.name}.", child))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{prefix}{child.name}", child
                todo.append((f"{prefix}{child.name}.", child))
            else:
                todo.append((prefix, child))


def _excepted(path: Path, name: str) -> bool:
    rel = str(path.relative_to(ROOT))
    return rel in SIZE_EXCEPTIONS or f"{rel}:{name}" in SIZE_EXCEPTIONS


def test_no_function_is_longer_than_60_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{fn.lineno} {name}: {n} lines"
        for room in ROOMS
        for path in _sources(room)
        for name, fn in _functions(path)
        if (n := (fn.end_lineno or fn.lineno) - fn.lineno + 1) > MAX_FUNCTION_LINES
        and not _excepted(path, name)
    ]
    assert not long, "split these by what they do:\n" + "\n".join(long)


def test_no_function_takes_more_than_5_positional_parameters() -> None:
    many = []
    for room in ROOMS:
        for path in _sources(room):
            for name, fn in _functions(path):
                params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
                if params[:1] in (["self"], ["cls"]):
                    params = params[1:]
                if len(params) > MAX_POSITIONAL and not _excepted(path, name):
                    many.append(f"{path.relative_to(ROOT)}:{fn.lineno} {name}: {len(params)}")
    assert not many, "make the rest keyword-only (`*`) or pass one object:\n" + "\n".join(many)


def test_no_module_keeps_under_400_lines_by_hand_formatting() -> None:
    skips = [
        f"{path.relative_to(ROOT)}:{number}"
        for room in ROOMS
        for path in _sources(room)
        if str(path.relative_to(ROOT)) not in SIZE_EXCEPTIONS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.rstrip().endswith("# fmt: skip")
    ]
    assert not skips, "let ruff format lay these out (split the module instead):\n" + "\n".join(
        skips
    )
