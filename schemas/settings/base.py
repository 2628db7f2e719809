"""What every settings group shares: the `LLMQ_` environment prefix, which commands take a
field as a flag, secrets that never get one, and routing of flat names into nested groups.

A field's *flat name* is its environment name without `LLMQ_`, lower-cased (`LLMQ_DEADLINE`
-> `deadline`, `LLMQ_OLLAMA_NUM_CTX` -> `ollama_num_ctx`). It is also its flag
(`--ollama-num-ctx`) and the keyword `Settings(...)` accepts for it, so operators, the
command line and tests keep one name per setting whatever group holds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "LLMQ_"
Command = str  # "api" | "worker" | "dev"


def setting(
    default: Any = ...,
    description: str = "",
    *,
    commands: tuple[Command, ...] | None = None,
    secret: bool = False,
    repeat: bool = False,
    **kwargs: Any,
) -> Any:
    """A documented field. `commands` overrides the group's (`()`: no flag); a `secret` never
    gets a flag (it would show in `ps`); a `repeat` flag may be given several times."""
    extra: dict[str, Any] = {}
    if commands is not None:
        extra["commands"] = list(commands)
    if secret:
        extra["secret"] = True
    if repeat:
        extra["repeat"] = True
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    return Field(description=description, json_schema_extra=extra or None, **kwargs)


def split_commas(value: object) -> object:
    """`a, b,c` (or a list of such strings, as repeated flags give) -> `["a", "b", "c"]`."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return [piece.strip() for part in value for piece in part.split(",") if piece.strip()]
    return value


def split_headers(value: object) -> object:
    """Newlines, or commas followed by the next `Name:`, separate headers."""
    if isinstance(value, str):
        parts = re.split(r"\n|,(?=\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*:)", value)
        return [part.strip() for part in parts if part.strip()]
    return value


@dataclass(frozen=True)
class Leaf:
    """One setting as the outside world sees it: flat name, where it lives, its field."""

    flat: str
    path: tuple[str, ...]
    info: FieldInfo
    commands: tuple[Command, ...]

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flat.upper()

    @property
    def flag(self) -> str:
        return "--" + self.flat.replace("_", "-")

    @property
    def secret(self) -> bool:
        return bool(_extra(self.info).get("secret"))

    @property
    def repeat(self) -> bool:
        return bool(_extra(self.info).get("repeat"))


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def group_type(info: FieldInfo) -> type[Group] | None:
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, Group):
        return annotation
    return None


def leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every setting below `model`, groups walked depth-first in declaration order."""
    prefix = model.model_config.get("env_prefix", ENV_PREFIX) if issubclass(model, Group) else ""
    own: tuple[Command, ...] = getattr(model, "commands", ())
    for name, info in model.model_fields.items():
        child = group_type(info)
        if child is not None:
            yield from leaves(child, (*path, name))
            continue
        flat = (str(prefix)[len(ENV_PREFIX) :] + name).lower()
        extra = _extra(info)
        commands = tuple(extra["commands"]) if "commands" in extra else own
        yield Leaf(flat, (*path, name), info, () if extra.get("secret") else commands)


def route(model: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `model` from flat names and/or its own fields.

    A key naming one of `model`'s groups takes that group (an instance, or a mapping built
    into one, environment included); any other key is a flat name and goes to the group
    holding it, which is built from the environment plus those values. Unknown keys are
    dropped, as the environment's are."""
    out: dict[str, Any] = {}
    children: dict[str, dict[str, Any]] = {}
    flat_owner = {leaf.flat: leaf.path for leaf in leaves(model)}
    for key, value in values.items():
        info = model.model_fields.get(key)
        child = group_type(info) if info is not None else None
        if child is not None and isinstance(value, Mapping):
            out[key] = child(**value)
        elif child is not None and isinstance(value, BaseModel):
            out[key] = value
        elif key in model.model_fields and key not in flat_owner:
            out[key] = value  # a field's own name (environment values arrive this way)
    for key, value in values.items():
        path = flat_owner.get(key)
        if path is None or isinstance(value, (Mapping, BaseModel)):
            continue
        if len(path) == 1:
            out[path[0]] = value
        else:
            children.setdefault(path[0], {})[key] = value
    for name, flat in children.items():
        child = group_type(model.model_fields[name])
        assert child is not None
        base = out.get(name)
        current = base.model_dump() if isinstance(base, BaseModel) else {}
        out[name] = child(**{**current, **flat})
    return out


class _LeafEnv(EnvSettingsSource):
    """The environment, for settings only: a nested group (`backend.ollama`) reads its own
    `LLMQ_OLLAMA_*` names, never a JSON blob from `LLMQ_OLLAMA`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if group_type(field) is not None:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Group(BaseSettings):
    """One concern's settings, read from `LLMQ_<FIELD>` (or a longer shared prefix)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    commands: ClassVar[tuple[Command, ...]] = ()
    """The commands (`api`, `worker`, `dev`) whose flags include this group's fields."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _LeafEnv(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _route(cls, data: Any) -> Any:
        return route(cls, data) if isinstance(data, Mapping) else data
