"""Helpers of the agents tests: a recording layer over a real client, a JSON-schema check."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any


class RecordingClient:
    """The real SDK client behind a thin layer that records what the chain asked of it.

    It declares ``server_tools`` as told and forwards ``schema``/``tools`` to the real client
    when that client takes them (the wire then carries them too).
    """

    def __init__(self, inner, server_tools=frozenset()):
        self.inner = inner
        self.provider = inner.provider
        self.model = inner.model
        self.server_tools = frozenset(server_tools)
        self.asked: list[dict] = []

    def complete(self, messages, reply_model, *, system=None, temperature=None, max_tokens=None,
                 schema=None, tools=None):
        self.asked.append({"model": reply_model.__name__, "schema": schema, "tools": tools})
        takes = inspect.signature(self.inner.complete).parameters
        extra = {k: v for k, v in (("schema", schema), ("tools", tools))
                 if v is not None and k in takes}
        return self.inner.complete(messages, reply_model, system=system,
                                   temperature=temperature, max_tokens=max_tokens, **extra)




def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return {
        "object": isinstance(value, dict), "array": isinstance(value, list),
        "string": isinstance(value, str), "boolean": isinstance(value, bool),
        "null": value is None,
    }[kind]


def _errors(value: Any, schema: dict[str, Any], at: str = "$") -> Iterator[str]:
    known = {"type", "enum", "minimum", "maximum", "properties", "required",
             "additionalProperties", "items", "minItems", "maxItems", "description"}
    assert set(schema) <= known, f"{at}: keyword(s) {set(schema) - known} not understood"
    if "type" in schema and not _type_ok(value, schema["type"]):
        yield f"{at}: {value!r} is not of type {schema['type']}"
        return
    if "enum" in schema and not any(
        value == c and type(value) is type(c) for c in schema["enum"]
    ):
        yield f"{at}: {value!r} is not one of {schema['enum']}"
    if "minimum" in schema and value < schema["minimum"]:
        yield f"{at}: {value!r} < {schema['minimum']}"
    if "maximum" in schema and value > schema["maximum"]:
        yield f"{at}: {value!r} > {schema['maximum']}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                yield f"{at}: {name!r} is required"
        for name, sub in value.items():
            if name in props:
                yield from _errors(sub, props[name], f"{at}.{name}")
            elif schema.get("additionalProperties") is False:
                yield f"{at}: {name!r} is not allowed"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            yield f"{at}: {len(value)} items < minItems"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield f"{at}: {len(value)} items > maxItems"
        for i, item in enumerate(value):
            yield from _errors(item, schema.get("items", {}), f"{at}[{i}]")


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every violation of ``schema`` by ``value`` (an empty list: valid)."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return list(_errors(value, schema))
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(value)]
