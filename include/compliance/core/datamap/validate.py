"""Loading and checking a data map, reporting every mistake at once with where it is.

Two passes: pydantic checks the structure (types, enums, unknown keys) and reports all structural
errors; when the structure is sound, the cross-reference rules below run and report all theirs.
Each `Issue` names a location (dotted path and YAML line) and a rule id from `RULES`.
Duplicate YAML keys (which a YAML loader silently collapses) are reported in either case.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError

from compliance.core.datamap import paths
from compliance.core.datamap.graph import RelationError, chain_to_consumer, tenant_path
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
    LogStore,
    RecordingStore,
    SqlSystem,
    Table,
    TableErase,
    Withhold,
)

RULES: dict[str, str] = {
    "yaml-syntax": "the file must be valid YAML holding a mapping",
    "structure": "keys and values must have the documented types and formats",
    "unknown-key": "only documented keys are allowed",
    "unknown-category": "categories are the CCPA categories of Stat 1798.140",
    "unknown-table": "a referenced table must be mapped in the same system",
    "unknown-column": "a referenced column must exist (primary key or mapped column)",
    "composite-key": "a composite primary key is fine on any table but the consumer table (its "
    "key is what every relation ends at), and a relation references a single-column key or a "
    "mapped column, never one part of a composite key",
    "unknown-system": "a store must name a SQL system of the map",
    "relation-missing": "every table but the consumer table needs a relation toward the consumer",
    "relation-unreachable": "following relations must reach the consumer table",
    "relation-cycle": "relations must not form a cycle",
    "missing-tenant": "every table must reach a tenant (client) column",
    "missing-identity": "the consumer table and every log store need an identity column or field",
    "identity-unreachable": "identity columns must be on tables that reach the consumer",
    "exception-required": "data kept despite deletion needs an R19 exception code (and a reason)",
    "deidentify-unattested": "`erase: deidentify` keeps deidentified data, which counts only with "
    "R17's three attestations in `deidentification`: measures against re-association, a public "
    "commitment not to re-identify, and recipients contractually bound (`recipients_bound: true`)",
    "category-undescribed": "every category used must be described in `categories` (R8)",
    "prefix-overlap": "two stores may not share a bucket prefix",
    "duplicate-name": "names must be unique (YAML keys, sub-processors, mapped vs ignored tables)",
    "bad-target": "a sub-processor target must fit its channel",
    "recipient-notice": "a recipient that got data through us (R16.4) is told (`channel` and "
    "`target`) or has an `impossible_or_disproportionate` justification, one of the two",
    "bad-path": "a log field path must follow the path syntax (dotted keys, `[]`, `\\` escapes)",
    "live-missing-table": "a mapped table must exist in the database",
    "live-missing-column": "a mapped column must exist in its table",
    "live-column-type": "a column's live type must fit its role: a time_column (and a hold "
    "registry's expires_column) is a DATE or TIMESTAMP; e-mail and phone identity columns are "
    "text; contact_id and record_id identity columns are text, integer or UUID",
    "live-type-mismatch": "columns compared with each other must have comparable types: a "
    "tenant column and the tenant registry's key, a relation column and the column it "
    "references, the hold registry's client and consumer columns and the keys they name",
}


@dataclass(frozen=True)
class Issue:
    location: str
    rule: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.location} (line {self.line})" if self.line else self.location
        return f"{where}: [{self.rule}] {self.message}"


class DataMapInvalid(ValueError):
    """A data map that cannot be used; `issues` holds every mistake found."""

    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = issues
        listing = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"data map {source} has {len(issues)} error(s):\n{listing}")


def load_datamap(path: str | Path) -> DataMap:
    """Read and check a data map file; raise `DataMapInvalid` listing every mistake."""
    return load_datamap_with_digest(path)[0]


def load_datamap_with_digest(path: str | Path) -> tuple[DataMap, str]:
    """The map and the sha256 of the bytes it was parsed from (read once: the two agree).

    A batch records the digest of the map it was planned with and refuses to resume under
    another one (docs/architecture.md)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        issue = Issue("<file>", "yaml-syntax", f"the file is not UTF-8 text ({exc.reason})")
        raise DataMapInvalid(str(path), [issue]) from exc
    datamap, issues = check_text(text)
    if issues or datamap is None:
        raise DataMapInvalid(str(path), issues)
    return datamap, hashlib.sha256(raw).hexdigest()


def check_text(text: str) -> tuple[DataMap | None, list[Issue]]:
    """Check a data map's YAML text: the map (None if its structure is broken) and every issue."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [_yaml_issue(exc)]
    if raw is None:
        return None, [Issue("<file>", "yaml-syntax", "the file is empty: a data map is a mapping")]
    if not isinstance(raw, dict):
        message = f"the data map must be a YAML mapping (key: value), not {_describe(raw)}"
        return None, [Issue("<file>", "yaml-syntax", message, 1)]
    lines, duplicates = _line_index(root)
    try:
        datamap = DataMap.model_validate(raw)
    except ValidationError as exc:
        return None, duplicates + _structural_issues(exc.errors(), lines)
    issues = [
        Issue(loc, rule, msg, _nearest_line(loc, lines))
        for loc, rule, msg in _cross_reference_issues(datamap)
    ]
    return datamap, duplicates + issues


def check_against_schema(
    datamap: DataMap, system_name: str, live: Mapping[str, Iterable[str]]
) -> list[Issue]:
    """Compare a SQL system's mapping with the live database (`live`: table -> column names, or
    table -> {column: reflected SQLAlchemy type}, as `live_schema` gives, to check types too).

    A missing column is located where the map names it: `columns.<name>`, or `primary_key`,
    `time_column`, `tenant_column`, `relation.column`. Every issue is reported at once.
    """
    system = datamap.systems[system_name]
    live_cols = {table: set(cols) for table, cols in live.items()}
    issues: list[Issue] = []
    for tname, table in system.tables.items():
        loc = f"systems.{system_name}.tables.{tname}"
        if tname not in live_cols:
            issues.append(
                Issue(loc, "live-missing-table", f"table {tname!r} is not in the database")
            )
            continue
        for col, where in _named_columns(table).items():
            if col not in live_cols[tname]:
                issues.append(
                    Issue(
                        f"{loc}.{where}",
                        "live-missing-column",
                        f"column {col!r} is not in table {tname!r} of the database",
                    )
                )
    for part, registry in (("tenants", system.tenants), ("holds", system.holds)):
        if registry is None:
            continue
        loc = f"systems.{system_name}.{part}"
        if registry.table not in live_cols:
            issues.append(
                Issue(
                    f"{loc}.table",
                    "live-missing-table",
                    f"table {registry.table!r} is not in the database",
                )
            )
            continue
        for key, col in registry.model_dump().items():
            if key == "placed_column" and key not in registry.model_fields_set:
                continue  # optional by default: without it a hold's expiry is taken as given
            if key != "table" and col and col not in live_cols[registry.table]:
                issues.append(
                    Issue(
                        f"{loc}.{key}",
                        "live-missing-column",
                        f"column {col!r} is not in table {registry.table!r} of the database",
                    )
                )
    for sname, store in datamap.stores.items():
        if not (isinstance(store, RecordingStore) and store.system == system_name):
            continue
        if store.table not in live_cols:
            if store.table not in system.tables:  # a mapped table is reported above
                issues.append(
                    Issue(
                        f"stores.{sname}.table",
                        "live-missing-table",
                        f"table {store.table!r} is not in the database",
                    )
                )
        elif store.key_column not in live_cols[store.table]:
            issues.append(
                Issue(
                    f"stores.{sname}.key_column",
                    "live-missing-column",
                    f"column {store.key_column!r} is not in table {store.table!r} of the database",
                )
            )
    types = {t: dict(cols) for t, cols in live.items() if isinstance(cols, Mapping)}
    if types:
        issues += _type_issues(system, f"systems.{system_name}", types)
    return issues


def live_schema(engine: Any) -> dict[str, dict[str, Any]]:
    """The live schema with types: table -> {column: reflected SQLAlchemy type}. SQLite reflects
    the declared type (a column declared INTEGER is an Integer, whatever it holds)."""
    import sqlalchemy as sa

    insp = sa.inspect(engine)
    return {t: {c["name"]: c["type"] for c in insp.get_columns(t)} for t in insp.get_table_names()}


class TimeColumnTypeError(ValueError):
    """A time column that is not a DATE or TIMESTAMP: comparing it with a datetime would drop
    rows (SQLite) or fail (PostgreSQL). Names the column, never a value."""


def type_family(kind: Any) -> str:
    """What a reflected type compares as: datetime, text, integer, number, uuid, boolean,
    binary, unknown (SQLite without a declared type) or other (JSON, arrays...)."""
    import sqlalchemy as sa

    families: list[tuple[type, str]] = [
        (sa.types.Date, "datetime"),
        (sa.types.DateTime, "datetime"),
        (sa.types.Boolean, "boolean"),  # before Integer: some dialects derive one from the other
        (sa.types.Integer, "integer"),
        (sa.types.Numeric, "number"),
        (sa.types.Uuid, "uuid"),
        (sa.types.String, "text"),
        (sa.types.Enum, "text"),
        (sa.types._Binary, "binary"),
        (sa.types.NullType, "unknown"),
    ]
    for cls, family in families:
        if isinstance(kind, cls):
            return family
    return "other"


_NUMBERS = frozenset({"integer", "number"})
_TEXT_KINDS = frozenset({IdentityType.email, IdentityType.phone})
_KEY_FAMILIES = frozenset({"text", "integer", "number", "uuid"})


def _comparable(a: str, b: str) -> bool:
    """Whether two families compare without a cast on both engines (unknown: cannot tell)."""
    return a == b or "unknown" in (a, b) or {a, b} <= _NUMBERS


def _type_issues(
    system: SqlSystem, sloc: str, types: Mapping[str, Mapping[str, Any]]
) -> list[Issue]:
    """Column types against each column's role (`live-column-type`) and against the columns it
    is compared with (`live-type-mismatch`). Missing tables and columns are reported by the
    caller and skipped here."""
    issues: list[Issue] = []

    def kind(table: str, column: str | None) -> Any:
        return types.get(table, {}).get(column) if column else None

    def role(loc: str, table: str, column: str | None, allowed: frozenset[str], what: str) -> None:
        found = kind(table, column)
        if found is not None and type_family(found) not in allowed:
            issues.append(
                Issue(
                    loc,
                    "live-column-type",
                    f"column {table}.{column} is {_type_name(found)}; {what}",
                )
            )

    def pair(loc: str, left: tuple[str, str | None], right: tuple[str, str | None]) -> None:
        a, b = kind(*left), kind(*right)
        if a is None or b is None or _comparable(type_family(a), type_family(b)):
            return
        issues.append(
            Issue(
                loc,
                "live-type-mismatch",
                f"column {left[0]}.{left[1]} is {_type_name(a)} but {right[0]}.{right[1]}, "
                f"which it is compared with, is {_type_name(b)}: make the types match (a "
                "cast on the column would defeat its index)",
            )
        )

    dates = frozenset({"datetime"})
    registry = system.tenants
    for tname, table in system.tables.items():
        loc = f"{sloc}.tables.{tname}"
        role(
            f"{loc}.time_column",
            tname,
            table.time_column,
            dates,
            "a time_column must be a DATE or TIMESTAMP type (leave time_column out to date the "
            "table by its parent, see docs/data-map.md)",
        )
        for cname, col in table.columns.items():
            if col.identity in _TEXT_KINDS:
                role(
                    f"{loc}.columns.{cname}",
                    tname,
                    cname,
                    frozenset({"text", "unknown"}),
                    f"a {col.identity.value} identity column must be a text type",
                )
            elif col.identity is not None:
                role(
                    f"{loc}.columns.{cname}",
                    tname,
                    cname,
                    _KEY_FAMILIES | {"unknown"},
                    f"a {col.identity.value} identity column must be text, integer or UUID",
                )
        if table.tenant_column and registry is not None:
            pair(
                f"{loc}.tenant_column",
                (tname, table.tenant_column),
                (registry.table, registry.key),
            )
        if table.relation:
            rel = table.relation
            pair(
                f"{loc}.relation.column",
                (tname, rel.column),
                (rel.target_table, rel.target_column),
            )
    holds = system.holds
    if holds is not None:
        hloc = f"{sloc}.holds"
        if registry is not None:
            pair(
                f"{hloc}.client_column",
                (holds.table, holds.client_column),
                (registry.table, registry.key),
            )
        consumer = system.tables.get(system.consumer_table)
        if consumer is not None and len(consumer.key_columns) == 1:
            pair(
                f"{hloc}.consumer_column",
                (holds.table, holds.consumer_column),
                (system.consumer_table, consumer.key_columns[0]),
            )
        role(
            f"{hloc}.expires_column",
            holds.table,
            holds.expires_column,
            dates | {"unknown"},
            "a hold's expires_column must be a DATE or TIMESTAMP type",
        )
    return issues


def _type_name(kind: Any) -> str:
    if type_family(kind) == "unknown":
        return "of no declared type"
    try:
        return str(kind.compile()).upper() or type(kind).__name__
    except Exception:  # a type that does not compile without a dialect (e.g. NullType)
        return "of no declared type" if type_family(kind) == "unknown" else type(kind).__name__


def _named_columns(table: Table) -> dict[str, str]:
    """Every column the map names for `table` -> the key that names it (first one wins)."""
    named = {name: f"columns.{name}" for name in table.columns}
    for key in table.key_columns:
        named.setdefault(key, "primary_key")
    if table.time_column:
        named.setdefault(table.time_column, "time_column")
    if table.tenant_column:
        named.setdefault(table.tenant_column, "tenant_column")
    if table.relation:
        named.setdefault(table.relation.column, "relation.column")
    return named


# -- YAML ----------------------------------------------------------------------------------------


def _yaml_issue(exc: yaml.YAMLError) -> Issue:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    message = f"{problem} (column {mark.column + 1})" if mark else problem
    context = getattr(exc, "context", None)
    if context:
        context_mark = getattr(exc, "context_mark", None)
        started = f" that starts on line {context_mark.line + 1}" if context_mark else ""
        message += f", {context}{started}"
    return Issue("<file>", "yaml-syntax", message, mark.line + 1 if mark else None)


def _line_index(root: yaml.Node | None) -> tuple[dict[str, int], list[Issue]]:
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


def _nearest_line(loc: str, lines: dict[str, int]) -> int | None:
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


def _structural_issues(errors: list[Any], lines: dict[str, int]) -> list[Issue]:
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
        issues.append(Issue(loc, rule, message, _nearest_line(loc, lines)))
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
            return "structure", f"expected a store (a mapping), got {_describe(value)}", parts
        message = f"required key 'kind' is missing (one of: {', '.join(_STORE_KINDS)})"
        return "structure", message, [*parts, "kind"]
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
        return "structure", f"{value!r} {_PATTERN_HELP[ctx['pattern']]}", parts
    if kind == "value_error" and "error" in ctx:
        return "structure", str(ctx["error"]), parts
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return "structure", f"expected a mapping (key: value), got {_describe(value)}", parts
    if kind == "list_type":
        return "structure", f"expected a list, got {_describe(value)}", parts
    if kind == "string_type":
        return "structure", f"expected text, got {_describe(value)}", parts
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


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"{type(value).__name__} {value!r}"


# -- cross-reference rules -----------------------------------------------------------------------


def _cross_reference_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    for sname, system in dm.systems.items():
        yield from _system_issues(f"systems.{sname}", system)
    yield from _store_issues(dm)
    yield from _category_issues(dm)
    yield from _subprocessor_issues(dm)
    yield from _deidentification_issues(dm)
    yield from _recipient_issues(dm)


def _system_issues(base: str, system: SqlSystem) -> Iterator[tuple[str, str, str]]:
    for name in system.ignore:
        if name in system.tables:
            yield (
                f"{base}.ignore.{name}",
                "duplicate-name",
                f"{name!r} is both mapped under `tables` and listed under `ignore`",
            )
    consumer = system.tables.get(system.consumer_table)
    if consumer is None:
        yield (
            f"{base}.consumer_table",
            "unknown-table",
            f"consumer table {system.consumer_table!r} is not among the mapped tables",
        )
    else:
        if not consumer.tenant_column:
            yield (
                f"{base}.tables.{system.consumer_table}.tenant_column",
                "missing-tenant",
                "the consumer table needs a tenant (client) column: requests never cross tenants",
            )
        if not any(col.identity for col in consumer.columns.values()):
            yield (
                f"{base}.tables.{system.consumer_table}.columns",
                "missing-identity",
                "the consumer table has no identity column (email, phone or contact_id)",
            )
        if consumer.relation is not None:
            yield (
                f"{base}.tables.{system.consumer_table}.relation",
                "relation-cycle",
                "the consumer table is the end of every relation chain and may not have a relation",
            )
        if len(consumer.key_columns) != 1:
            yield (
                f"{base}.tables.{system.consumer_table}.primary_key",
                "composite-key",
                f"the consumer table's primary_key must be one column (it is "
                f"{list(consumer.key_columns)!r}): relations and consumer keys name one column",
            )
    for tname, table in system.tables.items():
        loc = f"{base}.tables.{tname}"
        yield from _erase_issues(loc, table)
        if consumer is not None and tname != system.consumer_table:
            yield from _relation_issues(loc, tname, table, system)


def _erase_issues(loc: str, table: Table) -> Iterator[tuple[str, str, str]]:
    if table.erase is TableErase.keep and not (table.exception and table.reason):
        lacking = " and ".join(
            f"`{key}`" for key in ("exception", "reason") if not getattr(table, key)
        )
        yield (
            f"{loc}.erase",
            "exception-required",
            f"`erase: keep` needs an R19 `exception` code and a `reason`; {lacking} missing",
        )
    if table.erase is TableErase.mask:
        for cname, col in table.columns.items():
            if col.erase is ColumnErase.keep and col.exception is None:
                yield (
                    f"{loc}.columns.{cname}.erase",
                    "exception-required",
                    "`erase: keep` on a column needs `exception` (an R19 code)",
                )


def _relation_issues(
    loc: str, tname: str, table: Table, system: SqlSystem
) -> Iterator[tuple[str, str, str]]:
    rel = table.relation
    if rel is None:
        yield (
            f"{loc}.relation",
            "relation-missing",
            f"table {tname!r} has no relation toward consumer table {system.consumer_table!r}",
        )
        yield from _identity_unreachable(loc, tname, table, system)
        return
    target = system.tables.get(rel.target_table)
    if target is None:
        ignored = " (it is listed under `ignore`)" if rel.target_table in system.ignore else ""
        yield (
            f"{loc}.relation.references",
            "unknown-table",
            f"{rel.references!r} names table {rel.target_table!r}, which is not mapped{ignored}",
        )
        yield from _identity_unreachable(loc, tname, table, system)
        return
    single_key = target.key_columns[0] if len(target.key_columns) == 1 else None
    if rel.target_column != single_key and rel.target_column not in target.columns:
        if rel.target_column in target.key_columns:
            # (the consumer table's own composite key is reported once, at its primary_key)
            if rel.target_table != system.consumer_table:
                yield (
                    f"{loc}.relation.references",
                    "composite-key",
                    f"{rel.references!r} names one part of {rel.target_table!r}'s composite "
                    f"primary key {list(target.key_columns)!r}: a relation references a "
                    "single-column key or a mapped column (map it under `columns`)",
                )
        else:
            yield (
                f"{loc}.relation.references",
                "unknown-column",
                f"{rel.references!r}: {rel.target_table!r} has no column {rel.target_column!r} "
                f"(its primary key is {target.primary_key!r})",
            )
    try:
        chain_to_consumer(system, tname)
    except RelationError as exc:
        yield (f"{loc}.relation", exc.rule, str(exc))
        yield from _identity_unreachable(loc, tname, table, system)
        return
    try:
        tenant_path(system, tname)
    except RelationError as exc:
        yield (f"{loc}.tenant_column", exc.rule, str(exc))


def _identity_unreachable(
    loc: str, tname: str, table: Table, system: SqlSystem
) -> Iterator[tuple[str, str, str]]:
    """One issue per table whose identity columns cannot lead a request to a consumer row."""
    names = [cname for cname, col in table.columns.items() if col.identity]
    if names:
        yield (
            f"{loc}.columns.{names[0]}.identity",
            "identity-unreachable",
            f"identity column(s) {', '.join(names)} of {tname!r} cannot find a consumer: "
            f"the table does not reach {system.consumer_table!r}",
        )


def _store_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    seen: dict[tuple[str, str], str] = {}
    for sname, store in dm.stores.items():
        loc = f"stores.{sname}"
        system = dm.systems.get(store.system)
        if system is None:
            known = ", ".join(dm.systems)
            yield (
                f"{loc}.system",
                "unknown-system",
                f"no SQL system named {store.system!r} (systems: {known})",
            )
        prefix = getattr(store, "prefix", "")  # a recordings store may use the whole bucket
        for (bucket, other_prefix), other in seen.items():
            if bucket == store.bucket and (
                prefix.startswith(other_prefix) or other_prefix.startswith(prefix)
            ):
                yield (
                    f"{loc}.prefix" if hasattr(store, "prefix") else f"{loc}.bucket",
                    "prefix-overlap",
                    f"s3://{bucket}/{prefix} overlaps store {other!r} (s3://{bucket}/{other_prefix})",
                )
        seen[(store.bucket, prefix)] = sname
        if isinstance(store, LogStore) and not any(f.identity for f in store.fields.values()):
            yield (
                f"{loc}.fields",
                "missing-identity",
                "a log store needs at least one identity field",
            )
        if isinstance(store, LogStore):
            yield from _log_path_issues(loc, store)
        if (
            isinstance(store, RecordingStore)
            and system is not None
            and store.table not in system.tables
        ):
            yield (
                f"{loc}.table",
                "unknown-table",
                f"table {store.table!r} is not mapped in system {store.system!r}",
            )


def _log_path_issues(loc: str, store: LogStore) -> Iterator[tuple[str, str, str]]:
    """Every field of a log store is a path (`actor.email`, `recipients[].email`): a path that
    does not parse would silently match nothing, and a receipt would claim what was never
    searched. The tenant and timestamp fields name one value each, so no `[]` there."""
    for fname in store.fields:
        try:
            paths.parse(fname)
        except ValueError as exc:
            yield (f"{loc}.fields.{fname}", "bad-path", f"{fname!r} is not a field path: {exc}")
    for key in ("tenant_field", "timestamp_field"):
        value = getattr(store, key)
        try:
            parsed = paths.parse(value)
        except ValueError as exc:
            yield (f"{loc}.{key}", "bad-path", f"{value!r} is not a field path: {exc}")
            continue
        if parsed.has_each:
            yield (
                f"{loc}.{key}",
                "bad-path",
                f"{value!r}: `{key}` names one value per line, so it cannot use `[]`",
            )


def _category_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    used: dict[str, str] = {}
    for sname, system in dm.systems.items():
        for tname, table in system.tables.items():
            for cname, col in table.columns.items():
                for cat in col.categories:
                    used.setdefault(cat.value, f"systems.{sname}.tables.{tname}.columns.{cname}")
    for sname, store in dm.stores.items():
        if isinstance(store, LogStore):
            for fname, fld in store.fields.items():
                for cat in fld.categories:
                    used.setdefault(cat.value, f"stores.{sname}.fields.{fname}")
        elif isinstance(store, RecordingStore):
            for cat in store.categories:
                used.setdefault(cat.value, f"stores.{sname}.categories")
    for i, sp in enumerate(dm.subprocessors):
        for cat in sp.categories:
            used.setdefault(cat.value, f"subprocessors.{i}.categories")
    described = {c.value for c in dm.categories}
    for cat, where in used.items():
        if cat not in described:
            yield (
                where,
                "category-undescribed",
                f"category {cat!r} is used here but not described under `categories` (R8)",
            )


def _deidentification_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    """R17: a column erased by `deidentify` leaves deidentified data behind, which is no longer
    personal information only if the company attests the three conditions of Stat 1798.140
    "deidentified" (`DataMap.deidentification`). Without them it is personal information that
    was never deleted, so the map is refused. Reported at every such column (each is a place to
    fix), and at the block itself when an attestation is blank or `recipients_bound` is false."""
    users = [
        f"systems.{sname}.tables.{tname}.columns.{cname}.erase"
        for sname, system in dm.systems.items()
        for tname, table in system.tables.items()
        for cname, col in table.columns.items()
        if col.erase is ColumnErase.deidentify
    ]
    if not users:
        return
    block = dm.deidentification
    if block is None:
        for loc in users:
            yield (
                loc,
                "deidentify-unattested",
                "`erase: deidentify` needs R17's three attestations in a top-level "
                "`deidentification` block (measures, public_commitment, recipients_bound: "
                "true); without them the data kept is not deidentified (R17); or use nullify",
            )
        return
    for key, what in (
        ("measures", "the reasonable measures taken against re-association"),
        ("public_commitment", "the URL or text of the public commitment not to re-identify"),
    ):
        if not getattr(block, key).strip():
            yield (f"deidentification.{key}", "deidentify-unattested", f"give {what} (R17)")
    if block.recipients_bound is not True:
        yield (
            "deidentification.recipients_bound",
            "deidentify-unattested",
            "R17: deidentified data counts only when every recipient is contractually bound "
            "not to re-identify it; until they are, use nullify instead of deidentify",
        )


_SNS_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]+(\.fifo)?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_TARGET_HELP = {
    "webhook": "an http:// or https:// URL with a host",
    "sns": "an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)",
    "email": "an e-mail address",
}


def _target_ok(channel: str, target: str) -> bool:
    if channel == "webhook":
        url = urlsplit(target)
        return url.scheme in {"http", "https"} and bool(url.hostname)
    if channel == "sns":
        return _SNS_ARN.fullmatch(target) is not None
    return _EMAIL.fullmatch(target) is not None


def _recipient_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    """R16.4: every recipient is either told (a channel and target, like a sub-processor) or
    carries the facts that make telling it impossible or disproportionate, never both nor
    neither. Names are unique across sub-processors and recipients: notices are keyed by name."""
    first = {sp.name: f"subprocessors.{i}" for i, sp in enumerate(dm.subprocessors)}
    described = {c.value for c in dm.categories}
    for i, rc in enumerate(dm.recipients):
        loc = f"recipients.{i}"
        if rc.name in first:
            yield (
                f"{loc}.name",
                "duplicate-name",
                f"recipient {rc.name!r} is listed twice (first as {first[rc.name]}); names are "
                "unique across sub-processors and recipients",
            )
        first.setdefault(rc.name, loc)
        told = rc.channel is not None or rc.target is not None
        why = (rc.impossible_or_disproportionate or "").strip()
        if told and why:
            yield (
                loc,
                "recipient-notice",
                "R16.4: give either a channel and target or `impossible_or_disproportionate`, "
                "not both",
            )
        elif not told and not why:
            yield (
                loc,
                "recipient-notice",
                "R16.4: a recipient must be told (channel and target) or have an "
                "`impossible_or_disproportionate` justification",
            )
        elif told and (rc.channel is None or not rc.target):
            yield (
                f"{loc}.{'target' if rc.channel else 'channel'}",
                "recipient-notice",
                "R16.4: a recipient told to delete needs both `channel` and `target`",
            )
        elif told and rc.channel and rc.target and not _target_ok(rc.channel, rc.target):
            yield (
                f"{loc}.target",
                "bad-target",
                f"{rc.target!r} is not a valid {rc.channel} target: expected "
                f"{_TARGET_HELP[rc.channel]}",
            )
        elif not told and len(why) < 20:
            yield (
                f"{loc}.impossible_or_disproportionate",
                "recipient-notice",
                "R16.4/R21: state the facts that make telling them impossible or a "
                "disproportionate effort (at least 20 characters)",
            )
        for cat in rc.categories:
            if cat.value not in described:
                yield (
                    f"{loc}.categories",
                    "category-undescribed",
                    f"category {cat.value!r} is used here but not described under `categories` "
                    "(R8)",
                )


def _subprocessor_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    first: dict[str, int] = {}
    for i, sp in enumerate(dm.subprocessors):
        loc = f"subprocessors.{i}"
        if sp.name in first:
            yield (
                f"{loc}.name",
                "duplicate-name",
                f"sub-processor {sp.name!r} is listed twice "
                f"(first as subprocessors.{first[sp.name]})",
            )
        first.setdefault(sp.name, i)
        if not _target_ok(sp.channel, sp.target):
            yield (
                f"{loc}.target",
                "bad-target",
                f"{sp.target!r} is not a valid {sp.channel} target: expected "
                f"{_TARGET_HELP[sp.channel]}",
            )
