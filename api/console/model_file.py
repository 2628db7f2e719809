"""Writing the model table's TOML file (`LLMQ_MODELS_FILE`) from the console: the api's
`ModelTable` watches the file, so a save is a live reload on every replica that reads it."""

from __future__ import annotations

import json
import os
import tempfile

import msgspec

from llmq.api.model_table import ModelFile


def _key(name: str) -> str:
    """A TOML key: bare when it can be, else a basic string (JSON escapes are TOML's)."""
    bare = name and all(c.isalnum() or c in "-_" for c in name) and name.isascii()
    return name if bare else json.dumps(name)


def render(table: ModelFile) -> str:
    lines = ["# Written by the llmq console; see api/model_table.py for the format.", ""]
    lines.append("[aliases]")
    lines += [f"{_key(a)} = {json.dumps(t)}" for a, t in sorted(table.aliases.items())]
    for model, defaults in sorted(table.defaults.items()):
        lines += ["", f"[defaults.{_key(model)}]"]
        if defaults.temperature is not None:
            lines.append(f"temperature = {float(defaults.temperature)!r}")
        if defaults.max_tokens is not None:
            lines.append(f"max_tokens = {int(defaults.max_tokens)}")
    return "\n".join(lines) + "\n"


def parse(data: object) -> ModelFile:
    """The table a console request sends; raises msgspec.ValidationError when malformed."""
    table = msgspec.convert(data, ModelFile)
    for alias, target in table.aliases.items():
        if not alias.strip() or not target.strip():
            raise msgspec.ValidationError("an alias and its target may not be empty")
    return table


def write(path: str, table: ModelFile) -> None:
    """Replace the file atomically, so the watcher never reads half of it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".models-", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(table))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
