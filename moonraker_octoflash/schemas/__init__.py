"""JSON Schemas for presets and profiles, and a checker that speaks plainly.

Checking is the largest part of a quick command's time (``jsonschema`` is a
large import, and each schema is compiled on first use), so a document found
valid is remembered: ``check`` keeps the sha256 of the schema's inputs and
the document in a small file (``$XDG_CACHE_HOME/moonraker-octoflash/
checked``, default ``~/.cache``), and a later check of the same document
against the same schemas and checker code returns at once, without
importing ``jsonschema``.  Only documents that passed are remembered; an
invalid one is checked, and explained, every time.  ``OCTOFLASH_SCHEMA_CACHE=0``
turns the memory off.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Set

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


# --- the memory of documents found valid -----------------------------------------

_MEMO_LIMIT = 2000          # digests kept; the file is cut to half when it grows past it
_memo: Optional[Set[str]] = None


def _memo_path() -> Optional[str]:
    if os.environ.get("OCTOFLASH_SCHEMA_CACHE", "1") in ("0", "no", "off"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    return os.path.join(base, "moonraker-octoflash", "checked")


@functools.cache
def _inputs_digest(name: str) -> str:
    """What a check of schema ``name`` depends on besides the document.

    The schema file, this checker, and the flash method modules (the
    schemas' method enums come from them): their bytes for the schema, their
    sizes and times for the code.
    """
    digest = hashlib.sha256(name.encode() + b"\0")
    with open(os.path.join(HERE, f"{name}.schema.json"), "rb") as f:
        digest.update(f.read())
    methods = os.path.join(os.path.dirname(HERE), "flash", "methods")
    code = [os.path.abspath(__file__)] + sorted(
        os.path.join(methods, n) for n in os.listdir(methods) if n.endswith(".py"))
    for path in code:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _document_digest(name: str, instance: Any) -> Optional[str]:
    try:
        text = json.dumps(instance, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None        # not plain JSON: always checked in full
    try:
        inputs = _inputs_digest(name)
    except OSError:
        return None
    return hashlib.sha256(f"{inputs}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()


def _remembered(digest: str) -> bool:
    global _memo
    if _memo is None:
        _memo = set()
        path = _memo_path()
        if path is not None:
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    _memo.update(line.strip() for line in f if len(line.strip()) == 64)
            except (OSError, ValueError):
                pass
    return digest in _memo


def _remember(digest: str) -> None:
    if _memo is None:
        return
    _memo.add(digest)
    path = _memo_path()
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if len(_memo) > _MEMO_LIMIT:
            # Keep the newer half (the file's order), written whole and swapped in.
            with open(path, encoding="ascii", errors="replace") as f:
                lines = [line.strip() for line in f][-(_MEMO_LIMIT // 2):]
            lines.append(digest)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="ascii") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, path)
        else:
            with open(path, "a", encoding="ascii") as f:
                f.write(digest + "\n")
    except (OSError, ValueError):
        pass              # a read-only home: check in full next time


def check(name: str, instance: Any, what: str) -> None:
    """Validate ``instance`` against schema ``name``; raise ValidationError naming the problem."""
    digest = _document_digest(name, instance)
    if digest is not None and _remembered(digest):
        return
    validator = _validator(name)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        if digest is not None:
            _remember(digest)
        return
    import jsonschema
    # propertyNames failures point at the object; report the offending key.
    messages = []
    for err in errors:
        best = jsonschema.exceptions.best_match([err])
        messages.append(_describe(best, what))
    raise ValidationError("; ".join(dict.fromkeys(messages)))
