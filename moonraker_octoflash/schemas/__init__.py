"""JSON Schemas for presets and profiles, and a checker that speaks plainly."""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict

import jsonschema

from ..errors import ValidationError

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> Dict[str, Any]:
    with open(os.path.join(HERE, f"{name}.schema.json"), encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _describe(error: jsonschema.ValidationError, what: str) -> str:
    path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    where = f"{what}{path}" if path else what
    if error.validator == "additionalProperties" and error.validator_value is False:
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: unknown option(s) {', '.join(map(repr, extra))}"
    if error.validator == "required":
        return f"{where}: {error.message.replace(' is a required property', '')} is required"
    if error.validator == "pattern" and error.validator_value.startswith("^CONFIG_"):
        return (f"{where}: {error.instance!r} is not a Kconfig symbol name "
                "(expected CONFIG_ followed by capital letters, digits and '_')")
    if error.validator == "pattern" and "kconfig" in error.absolute_path:
        return (f"{where}: {error.instance!r} is not a .config value "
                "(y, n, a number, or a \"quoted string\" with no newline and balanced quotes)")
    if error.validator == "pattern":
        field = error.absolute_path[-1] if error.absolute_path else what
        desc = error.schema.get("description")
        msg = f"{where}: {error.instance!r} is not a valid value for {field}"
        return f"{msg} ({desc})" if desc else msg
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{where}: {error.instance!r} is not one of {allowed}"
    return f"{where}: {error.message}"


def check(name: str, instance: Any, what: str) -> None:
    """Validate ``instance`` against schema ``name``; raise ValidationError naming the problem."""
    validator = _validator(name)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    # propertyNames failures point at the object; report the offending key.
    messages = []
    for err in errors:
        best = jsonschema.exceptions.best_match([err])
        messages.append(_describe(best, what))
    raise ValidationError("; ".join(dict.fromkeys(messages)))
