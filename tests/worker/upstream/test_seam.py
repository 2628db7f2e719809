"""The seam holds: backends import no HTTP library, and only `choice` names a client."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.source import parse

ROOT = Path(__file__).resolve().parents[3] / "worker"
LIBRARIES = ("httpx", "httptools", "aiohttp", "h11", "httpcore")
CLIENTS = ("llmq.worker.upstream.httpx_client", "llmq.worker.upstream.fast_client")


def _imports(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.extend(
                [f"{node.module}.{alias.name}" for alias in node.names]
                if node.level == 0
                else [node.module]
            )
    return found


def _names(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_backends_import_no_http_library_and_no_client() -> None:
    wrong = [
        f"{path.name}: {module}"
        for path in sorted((ROOT / "backends").glob("*.py"))
        for module in _imports(path)
        if _names(module, LIBRARIES) or _names(module, CLIENTS)
    ]
    assert not wrong


def test_only_choice_names_the_client_implementations() -> None:
    naming = sorted(
        path.name
        for path in ROOT.rglob("*.py")
        if path.name not in ("httpx_client.py", "fast_client.py")
        and any(_names(module, CLIENTS) for module in _imports(path))
    )
    assert naming == ["choice.py"]
