"""OpenAI's own OpenAPI document as the test of every body and stream event llmq sends.

`openapi.json` is a copy of OpenAI's published description (github.com/openai/openai-openapi,
MIT licence in LICENSE beside it). `assert_valid("CreateChatCompletionResponse", body)` checks
one instance against a component schema with jsonschema's Draft 2020-12 validator, resolving
`#/components/schemas/...` references against the whole document.

The document says `openapi: 3.1.0` but still marks 112 schemas with 3.0's `nullable: true`,
which JSON Schema ignores; `_nullable` rewrites each into `anyOf: [schema, null]`, so a null
is valid exactly where OpenAI's document means to allow it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_DOCUMENT = Path(__file__).with_name("openapi.json")
_BASE = "urn:openai-openapi"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten = {key: _nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [rewritten, {"type": "null"}]}
    return rewritten


@cache
def _registry() -> Registry:
    contents = _nullable(json.loads(_DOCUMENT.read_text()))
    resource = Resource.from_contents(contents, default_specification=DRAFT202012)
    return Registry().with_resource(_BASE, resource)


@cache
def validator(component: str) -> Draft202012Validator:
    schema = {"$ref": f"{_BASE}#/components/schemas/{component}"}
    return Draft202012Validator(schema, registry=_registry())


def errors(component: str, instance: Any) -> list[str]:
    """Every violation, as `path: message`; empty when `instance` is valid."""
    found = validator(component).iter_errors(instance)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def assert_valid(component: str, instance: Any) -> None:
    problems = errors(component, instance)
    assert not problems, f"not a valid {component}:\n" + "\n".join(problems)
