"""The Open Responses specification as a test: its OpenAPI document (dated 2026-04-24), read
at test time from the PyPI package `openresponses-py` (the dev extra), checks every Response
object and streaming event llmq sends, beside OpenAI's own document (`tests.spec`)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.spec import _nullable

VERSION = "2026-04-24"
_BASE = "urn:open-responses"


@cache
def _document() -> dict[str, Any]:
    try:
        path = resources.files("openresponses") / "openapi" / f"{VERSION}.json"
        text = path.read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip(
            "the Open Responses document is missing: pip install -e '.[dev]' (openresponses-py)"
        )
    document: dict[str, Any] = _nullable(json.loads(text))
    return document


@cache
def _registry() -> Registry:
    resource = Resource.from_contents(_document(), default_specification=DRAFT202012)
    return Registry().with_resource(_BASE, resource)


@cache
def _validator(component: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"{_BASE}#/components/schemas/{component}"}, registry=_registry()
    )


@cache
def event_schemas() -> dict[str, str]:
    """Each streaming event type → its schema, from the `text/event-stream` answer of
    `POST /responses`."""
    answer = _document()["paths"]["/responses"]["post"]["responses"]["200"]["content"]
    out = {}
    for ref in answer["text/event-stream"]["schema"]["oneOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        out[_document()["components"]["schemas"][name]["properties"]["type"]["enum"][0]] = name
    return out


def errors(component: str, instance: Any) -> list[str]:
    found = _validator(component).iter_errors(instance)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def assert_response(body: dict[str, Any]) -> None:
    """A Response object is an Open Responses `ResponseResource`."""
    problems = errors("ResponseResource", body)
    assert not problems, "not an Open Responses ResponseResource:\n" + "\n".join(problems)


OPENAI_NAMES = {
    "response.reasoning_text.delta": "response.reasoning.delta",
    "response.reasoning_text.done": "response.reasoning.done",
}
"""The one naming difference: OpenAI calls the reasoning-text events `reasoning_text`, Open
Responses `reasoning`; llmq sends OpenAI's names (what the SDKs read), so these are checked
against Open Responses' schema of the same event under its name."""


def assert_event(event: dict[str, Any]) -> None:
    """A streaming event is the Open Responses event of its `type`."""
    kind = event.get("type", "")
    if kind in OPENAI_NAMES:
        event = {**event, "type": OPENAI_NAMES[kind]}
    schema = event_schemas().get(event.get("type", ""))
    assert schema is not None, f"Open Responses has no streaming event {event.get('type')!r}"
    problems = errors(schema, event)
    assert not problems, f"not an Open Responses {schema}:\n" + "\n".join(problems)
