"""llmq's shortcuts into its libraries' private parts, each behind a version gate.

A shortcut saves real time on the hot path (docs/benchmarks.md) but relies on what a library
does not promise: a private attribute, a copied method. So every such use lives here, one
module per library (`nats`, `redis`, `starlette`), and each module's `Gate` checks once, at
first use, that the installed version is inside the range the shortcuts were tested with.
Outside it — or with `LLMQ_FAST_PATHS=0` — the gate is shut: the callers take the library's
public path, and one log line says why. Nothing else in llmq touches those private parts
(tests/test_architecture.py checks it).

This package imports nothing of llmq, so every room may use it.
"""

from __future__ import annotations

import logging
import os
import re
from importlib import metadata

log = logging.getLogger("llmq.fast_paths")

ENV = "LLMQ_FAST_PATHS"
_configured: bool | None = None


def configure(enabled: bool | None) -> None:
    """Set the switch from the process's settings (`fast_paths`), before any gate is asked;
    without it (or with None) the gates read `LLMQ_FAST_PATHS` themselves."""
    global _configured
    _configured = enabled
    for gate in Gate.every:
        gate.reset()


def enabled() -> bool:
    """The switch: on unless configured off or `LLMQ_FAST_PATHS` is 0/false/no/off."""
    if _configured is not None:
        return _configured
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _parse(version: str) -> tuple[int, ...]:
    """`2.16.0` -> (2, 16, 0); a pre-release or local part is cut (`2.17.0rc1` -> (2, 17, 0))."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in found.group().split(".")) if found else ()


class Gate:
    """One library's shortcuts: open when the switch is on and every distribution it names
    is installed in its tested range `[low, high)`."""

    every: list[Gate] = []

    def __init__(self, library: str, tested: dict[str, tuple[str, str]]) -> None:
        self.library = library
        self.tested = tested
        """distribution -> (lowest tested version, first version not tested)."""
        self._open: bool | None = None
        Gate.every.append(self)

    def reset(self) -> None:
        self._open = None

    @property
    def open(self) -> bool:
        found = self._open
        if found is None:
            found = self._open = self._check()
        return found

    def _check(self) -> bool:
        if not enabled():
            log.info("%s shortcuts off (%s=0): the library's public path", self.library, ENV)
            return False
        for dist, (low, high) in self.tested.items():
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                version = "none"
            if not _parse(low) <= _parse(version) < _parse(high):
                log.warning(
                    "%s %s is outside the range llmq's shortcuts were tested with "
                    "(>=%s,<%s): using its public path",
                    *(dist, version, low, high),
                )
                return False
        return True
