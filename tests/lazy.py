"""A module imported on first use (the standard library's `importlib.util.LazyLoader`).

Each pytest-xdist worker imports every test module to collect the suite, and with it every
SDK they import at the top: the anthropic SDK alone takes 2 s of CPU a worker, for tests
that run in one of them. `anthropic = lazy("anthropic")` at a module's top defers that to
the first test that touches the SDK.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy(name: str) -> ModuleType:
    """Module `name`, loaded when one of its attributes is first read."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
