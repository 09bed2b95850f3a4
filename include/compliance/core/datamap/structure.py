"""The first pass of the check: YAML syntax, where each key is (line numbers), keys given twice,
and pydantic's structural errors put in words (a misspelt key with its correction, an enum
value with what was expected) so one run reports every mistake with its line.

Also used by the retention policy's checker (`compliance.retention.policy`), which reports its
YAML the same way.
"""

from __future__ import annotations

import difflib
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from compliance.core.datamap.issues import Issue
from compliance.core.datamap.model import (
    BUCKET_PATTERN,
    NAME_PATTERN,
    PREFIX_PATTERN,
    REFERENCE_PATTERN,
    Category,
    ColumnErase,
    DataMap,
    ExceptionCode,
    IdentityType,
    TableErase,
    Withhold,
)

# -- YAML ----------------------------------------------------------------------------------------


def yaml_issue(exc: yaml.YAMLError) -> Issue:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    message = f"{problem} (column {mark.column + 1})" if mark else problem
    context = getattr(exc, "context", None)
    if context:
        context_mark = getattr(exc, "context_mark", None)
        started = f" that starts on line {context_mark.line + 1}" if context_mark else ""
        message += f", {context}{started}"
    return Issue("<file>", "yaml-syntax", message, mark.line + 1 if mark else None)


def line_index(root: yaml.Node | None) -> tuple[dict[str, int], list[Issue]]:
    """Dotted path -> 1-based line of each YAML node; and the keys given twice in one mapping."""
    index: dict[str, int] = {}
    duplicates: list[Issue] = []

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                sub = f"{path}.{name}" if path else name
                line = key.start_mark.line + 1
                if name in first:
                    duplicates.append(
                        Issue(
                            sub,
                            "duplicate-name",
                            f"key {name!r} is given twice (first on line {first[name]}); "
                            "YAML would silently keep only the last one",
                            line,
                        )
                    )
                else:
                    first[name] = line
                    index[sub] = line
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}.{i}"
                index[sub] = item.start_mark.line + 1
                walk(item, sub)

    if root is not None:
        walk(root, "")
    return index, duplicates


def nearest_line(loc: str, lines: dict[str, int]) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc.rpartition(".")[0]
    return None


# -- structural errors ---------------------------------------------------------------------------

_STORE_KINDS = ("log", "backup", "recordings")

# What an enum or literal value is, in words, keyed by the set of values pydantic expected.
_VALUE_NOUNS: dict[frozenset[str], str] = {
    frozenset(Category): "a CCPA category",
    frozenset(Withhold): "an R10 withhold kind",
    frozenset(IdentityType): "an identity type",
    frozenset(ExceptionCode): "an R19 exception code",
    frozenset(ColumnErase): "a column erase action",
    frozenset(TableErase): "a table erase action",
    frozenset({"drop_line", "redact"}): "a log erase action",
    frozenset({"webhook", "sns", "email"}): "a sub-processor channel",
    frozenset({"sql"}): "a system kind",
    frozenset({"1"}): "a supported data map version",
}

_PATTERN_HELP: dict[str, str] = {
    NAME_PATTERN: "is not a valid name: use letters, digits and '_', not starting with a digit",
    REFERENCE_PATTERN: "is not a reference: write 'table.column'",
    PREFIX_PATTERN: "is not a valid prefix: '' (the whole bucket) or folders each ending "
    "with '/', e.g. 'app/'",
    BUCKET_PATTERN: "is not a valid S3 bucket name: 3 to 63 lowercase letters, digits, '.' "
    "and '-', starting and ending with a letter or digit",
}


def structural_issues(errors: list[Any], lines: dict[str, int]) -> list[Issue]:
    # A misspelt required key gives two errors (unknown `primary_kye`, missing `primary_key`):
    # report it once, as the unknown key with its correction.
    missing = {tuple(_path(err["loc"])) for err in errors if err["type"] == "missing"}
    folded: set[tuple[str, ...]] = set()
    suggestions: dict[int, str] = {}
    for n, err in enumerate(errors):
        if err["type"] == "extra_forbidden":
            parts = _path(err["loc"])
            allowed = _allowed_keys(err["loc"][:-1])
            close = difflib.get_close_matches(parts[-1], allowed, n=1, cutoff=0.6)
            if close:
                suggestions[n] = close[0]
                target = (*parts[:-1], close[0])
                if target in missing:
                    folded.add(target)
            elif allowed:
                suggestions[n] = ""
    issues = []
    for n, err in enumerate(errors):
        parts = _path(err["loc"])
        if err["type"] == "missing" and tuple(parts) in folded:
            continue
        rule, message, parts = _describe_error(err, parts, suggestions.get(n), folded)
        loc = ".".join(parts) or "<root>"
        issues.append(Issue(loc, rule, message, nearest_line(loc, lines)))
    return issues


def _describe_error(
    err: Any, parts: list[str], suggestion: str | None, folded: set[tuple[str, ...]]
) -> tuple[str, str, list[str]]:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    is_key = bool(err["loc"]) and err["loc"][-1] == "[key]"
    if kind == "extra_forbidden":
        message = f"unknown key {parts[-1]!r}"
        if suggestion:
            required = " (a required key)" if (*parts[:-1], suggestion) in folded else ""
            message += f": did you mean {suggestion!r}{required}?"
        elif suggestion == "":
            allowed = ", ".join(_allowed_keys(err["loc"][:-1]))
            message += f"; expected one of: {allowed}"
        return "unknown-key", message, parts
    if kind == "missing":
        return "structure", f"required key {parts[-1]!r} is missing", parts
    if kind in {"enum", "literal_error"}:
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", ""))) or [
            str(ctx.get("expected", ""))
        ]
        noun = _VALUE_NOUNS.get(frozenset(expected), "allowed here")
        rule = "unknown-category" if noun == "a CCPA category" else "structure"
        message = f"{value!r} is not {noun} (expected one of: {', '.join(expected)})"
        return rule, message, parts
    if kind == "union_tag_invalid":
        message = (
            f"{ctx.get('tag')!r} is not a store kind (expected one of: {', '.join(_STORE_KINDS)})"
        )
        return "structure", message, [*parts, "kind"]
    if kind == "union_tag_not_found":
        if not isinstance(value, dict):
            return "structure", f"expected a store (a mapping), got {describe(value)}", parts
        message = f"required key 'kind' is missing (one of: {', '.join(_STORE_KINDS)})"
        return "structure", message, [*parts, "kind"]
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
        return "structure", f"{value!r} {_PATTERN_HELP[ctx['pattern']]}", parts
    if kind == "value_error" and "error" in ctx:
        return "structure", str(ctx["error"]), parts
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return "structure", f"expected a mapping (key: value), got {describe(value)}", parts
    if kind == "list_type":
        return "structure", f"expected a list, got {describe(value)}", parts
    if kind == "string_type":
        return "structure", f"expected text, got {describe(value)}", parts
    if kind == "too_short" and not value:
        return "structure", "must not be empty", parts
    message = err["msg"]
    if is_key:
        message = f"key {value!r}: {message}"
    return "structure", message, parts


def _path(loc: tuple[Any, ...]) -> list[str]:
    """Pydantic's error location as the dotted-path parts of the YAML (no union tag, no [key])."""
    parts = [str(p) for p in loc]
    if len(parts) > 2 and parts[0] == "stores" and parts[2] in _STORE_KINDS:
        del parts[2]  # the discriminator tag pydantic inserts after `stores.<name>`
    if parts and parts[-1] == "[key]":
        parts.pop()
    return parts


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a model allows at `loc` (pydantic's raw location); [] if no model is there."""
    node: Any = DataMap
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return []
            node = field.annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        elif get_origin(node) is list:
            node = get_args(node)[0]
        elif get_origin(node) in {Union, types.UnionType}:
            node = next((m for m in get_args(node) if _kind_tag(m) == part), None)
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _unwrap(node: Any) -> Any:
    """Strip `Annotated[...]` and `X | None` down to the type that holds the keys."""
    while True:
        if get_origin(node) is Annotated:
            node = get_args(node)[0]
        elif get_origin(node) in {Union, types.UnionType}:
            members = [m for m in get_args(node) if m is not type(None)]
            if len(members) != 1:
                return node
            node = members[0]
        else:
            return node


def _kind_tag(model: Any) -> str | None:
    field = getattr(model, "model_fields", {}).get("kind")
    if field is not None and get_origin(field.annotation) is Literal:
        return str(get_args(field.annotation)[0])
    return None


def describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"{type(value).__name__} {value!r}"
