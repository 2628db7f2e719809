"""Reading the project's own source as syntax trees (the architecture and package checks)."""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse(path: Path) -> ast.Module:
    """`ast.parse` of a file, with the garbage collector held off while it runs.

    CPython 3.11.7 keeps the AST constructor's recursion depth in one interpreter-wide
    counter (fixed in later releases, python/cpython#106905). A collection during
    `ast.parse` can finalize an earlier test's asyncio task whose exception nobody read; the
    task logs it, the 3.11 traceback module calls `ast.parse` to place its carets, and the
    nested parse resets the counter: the outer one fails with `SystemError: AST constructor
    recursion depth mismatch`. Without a collection no finalizer runs mid-parse."""
    source = path.read_text(encoding="utf-8")
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename=str(path))
    finally:
        if enabled:
            gc.enable()
