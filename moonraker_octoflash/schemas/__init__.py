"""JSON Schemas for presets and profiles, and a checker that speaks plainly."""
from __future__ import annotations

import functools
import json
import os
import re
from typing import TYPE_CHECKING, Any, Dict, Iterator

from ..errors import ValidationError

if TYPE_CHECKING:
    import jsonschema

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=256)
def _whole(pattern: str) -> re.Pattern[str]:
    """``pattern`` with a final ``$`` that means the end of the text.

    JSON Schema patterns are searched with Python's ``re``, where ``$`` also
    matches before a final newline: ``^[a-z]+$`` would accept ``"abc\\n"``.
    A ``$`` at the end of a pattern is read as ``\\Z`` here.
    """
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any
             ) -> Iterator[jsonschema.ValidationError]:
    import jsonschema
    if validator.is_type(instance, "string") and not _whole(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _strict_validator() -> Any:
    """Draft 2020-12 with the whole-text pattern rule; every schema here uses it.

    jsonschema is imported on first use: it is a large import, and many
    commands (and Moonraker's start) never validate anything.
    """
    import jsonschema
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


def validator_for(schema: Dict[str, Any]) -> Any:
    """A validator for ``schema`` that reads patterns as whole-text matches."""
    return _strict_validator()(schema)


# Where each schema names a flash method; the enum there is the registry's names.
_METHOD_ENUMS = {"profile": ("properties", "flash_method"),
                 "preset": ("$defs", "flash_method", "properties", "method")}


@functools.cache
def load_schema(name: str) -> Dict[str, Any]:
    with open(os.path.join(HERE, f"{name}.schema.json"), encoding="utf-8") as f:
        schema: Dict[str, Any] = json.load(f)
    where = _METHOD_ENUMS.get(name)
    if where is not None:
        from ..flash.methods import method_names   # imported at first use: no cycle
        node = schema
        for key in where:
            node = node[key]
        node["enum"] = method_names()
    return schema


@functools.cache
def _validator(name: str) -> Any:
    schema = load_schema(name)
    _strict_validator().check_schema(schema)
    return validator_for(schema)


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
        from ..kconfig import value_problem
        problem = value_problem(error.instance) or "not a .config value"
        return f"{where}: {error.instance!r}: {problem}"
    if error.validator == "maxProperties":
        return (f"{where}: {len(error.instance)} entries; at most {error.validator_value} "
                "are allowed")
    if error.validator == "maxLength":
        return f"{where}: longer than {error.validator_value} characters"
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
    import jsonschema
    # propertyNames failures point at the object; report the offending key.
    messages = []
    for err in errors:
        best = jsonschema.exceptions.best_match([err])
        messages.append(_describe(best, what))
    raise ValidationError("; ".join(dict.fromkeys(messages)))
