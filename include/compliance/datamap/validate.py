"""Loading and checking a data map, reporting every mistake at once with where it is.

Two passes: pydantic checks the structure (types, enums, unknown keys) and reports all structural
errors; when the structure is sound, the cross-reference rules below run and report all theirs.
Each `Issue` names a location (dotted path and YAML line) and a rule id from `RULES`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from compliance.datamap.graph import RelationError, chain_to_consumer, tenant_path
from compliance.datamap.model import (
    BackupStore,
    ColumnErase,
    DataMap,
    LogStore,
    RecordingStore,
    SqlSystem,
    TableErase,
)

RULES: dict[str, str] = {
    "yaml-syntax": "the file must be valid YAML holding a mapping",
    "structure": "keys and values must have the documented types",
    "unknown-key": "only documented keys are allowed",
    "unknown-category": "categories are the CCPA categories of Stat 1798.140",
    "unknown-table": "a referenced table must be mapped in the same system",
    "unknown-column": "a referenced column must exist (primary key or mapped column)",
    "unknown-system": "a store must name a SQL system of the map",
    "relation-missing": "every table but the consumer table needs a relation toward the consumer",
    "relation-unreachable": "following relations must reach the consumer table",
    "relation-cycle": "relations must not form a cycle",
    "missing-tenant": "every table must reach a tenant (client) column",
    "missing-identity": "the consumer table, and every log store, needs an identity column or field",
    "identity-unreachable": "identity columns must be on tables that reach the consumer",
    "exception-required": "data kept despite deletion needs an R19 exception code (and a reason)",
    "category-undescribed": "every category used must be described in `categories` (R8)",
    "prefix-overlap": "two stores may not share a bucket prefix",
    "duplicate-name": "names must be unique",
    "bad-target": "a sub-processor target must fit its channel",
    "live-missing-table": "a mapped table must exist in the database",
    "live-missing-column": "a mapped column must exist in its table",
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
    path = Path(path)
    datamap, issues = check_text(path.read_text(encoding="utf-8"))
    if issues or datamap is None:
        raise DataMapInvalid(str(path), issues)
    return datamap


def check_text(text: str) -> tuple[DataMap | None, list[Issue]]:
    try:
        raw = yaml.safe_load(text)
        lines = _line_index(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        return None, [Issue("<file>", "yaml-syntax", str(exc).splitlines()[0], line)]
    if not isinstance(raw, dict):
        return None, [Issue("<file>", "yaml-syntax", "the data map must be a YAML mapping")]
    try:
        datamap = DataMap.model_validate(raw)
    except ValidationError as exc:
        return None, [_structural_issue(err, lines) for err in exc.errors()]
    issues = [
        Issue(loc, rule, msg, lines.get(loc) or lines.get(loc.rsplit(".", 1)[0]))
        for loc, rule, msg in _cross_reference_issues(datamap)
    ]
    return datamap, issues


def check_against_schema(
    datamap: DataMap, system_name: str, live: Mapping[str, Iterable[str]]
) -> list[Issue]:
    """Compare a SQL system's mapping with the live database (`live`: table -> column names)."""
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
        wanted = {table.primary_key, table.time_column, *table.columns}
        wanted |= {table.tenant_column} if table.tenant_column else set()
        wanted |= {table.relation.column} if table.relation else set()
        for col in sorted(wanted - live_cols[tname]):
            issues.append(
                Issue(
                    f"{loc}.columns.{col}", "live-missing-column", f"{tname}.{col} does not exist"
                )
            )
    for sname, store in datamap.stores.items():
        if isinstance(store, RecordingStore) and store.system == system_name:
            cols = live_cols.get(store.table, set())
            if store.key_column not in cols:
                issues.append(
                    Issue(
                        f"stores.{sname}.key_column",
                        "live-missing-column",
                        f"{store.table}.{store.key_column} does not exist",
                    )
                )
    return issues


# -- structural errors -------------------------------------------------------------------------


def _structural_issue(err: Any, lines: dict[str, int]) -> Issue:
    loc_parts = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    loc = ".".join(loc_parts) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        rule, msg = "unknown-key", f"unknown key {loc_parts[-1]!r}"
    elif kind == "enum" and "categor" in loc:
        rule, msg = "unknown-category", f"{err['input']!r} is not a CCPA category; {err['msg']}"
    elif kind == "missing":
        rule, msg = "structure", f"required key {loc_parts[-1]!r} is missing"
    else:
        rule, msg = "structure", err["msg"]
    return Issue(loc, rule, msg, _nearest_line(loc, lines))


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part in {"log", "backup", "recordings"}


def _nearest_line(loc: str, lines: dict[str, int]) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc.rpartition(".")[0]
    return None


def _line_index(text: str) -> dict[str, int]:
    """Dotted path -> 1-based line of each YAML node, so errors can point into the file."""
    root = yaml.compose(text)
    index: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = f"{path}.{key.value}" if path else str(key.value)
                index[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}.{i}"
                index[sub] = item.start_mark.line + 1
                walk(item, sub)

    if root is not None:
        walk(root, "")
    return index


# -- cross-reference rules ---------------------------------------------------------------------


def _cross_reference_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    for sname, system in dm.systems.items():
        yield from _system_issues(f"systems.{sname}", system)
    yield from _store_issues(dm)
    yield from _category_issues(dm)
    yield from _subprocessor_issues(dm)


def _system_issues(base: str, system: SqlSystem) -> Iterator[tuple[str, str, str]]:
    consumer = system.tables.get(system.consumer_table)
    if consumer is None:
        yield (
            f"{base}.consumer_table",
            "unknown-table",
            f"consumer table {system.consumer_table!r} is not among the mapped tables",
        )
        return
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
    for tname, table in system.tables.items():
        loc = f"{base}.tables.{tname}"
        for name in system.ignore:
            if name == tname:
                yield (
                    f"{base}.ignore.{name}",
                    "duplicate-name",
                    f"{name!r} is both mapped and ignored",
                )
        yield from _table_issues(loc, tname, table, system)


def _table_issues(
    loc: str, tname: str, table: Any, system: SqlSystem
) -> Iterator[tuple[str, str, str]]:
    if table.erase is TableErase.keep and not (table.exception and table.reason):
        yield (
            f"{loc}.erase",
            "exception-required",
            "`erase: keep` needs both `exception` (an R19 code) and `reason`",
        )
    if table.erase is TableErase.mask:
        for cname, col in table.columns.items():
            if col.erase is ColumnErase.keep and col.exception is None:
                yield (
                    f"{loc}.columns.{cname}.erase",
                    "exception-required",
                    "`erase: keep` on a column needs `exception` (an R19 code)",
                )
    if tname == system.consumer_table:
        return
    rel = table.relation
    if rel is None:
        yield (
            f"{loc}.relation",
            "relation-missing",
            f"table {tname!r} has no relation toward consumer table {system.consumer_table!r}",
        )
        return
    target = system.tables.get(rel.target_table)
    if target is None:
        yield (
            f"{loc}.relation.references",
            "unknown-table",
            f"{rel.references!r} names table {rel.target_table!r}, which is not mapped",
        )
        return
    if rel.target_column != target.primary_key and rel.target_column not in target.columns:
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
        return
    try:
        tenant_path(system, tname)
    except RelationError as exc:
        yield (f"{loc}.tenant_column", exc.rule, str(exc))


def _store_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    seen: dict[tuple[str, str], str] = {}
    for sname, store in dm.stores.items():
        loc = f"stores.{sname}"
        system = dm.systems.get(store.system)
        if system is None:
            yield (f"{loc}.system", "unknown-system", f"no SQL system named {store.system!r}")
        prefix = getattr(store, "prefix", "")
        for (bucket, other_prefix), other in seen.items():
            if bucket == store.bucket and (
                prefix.startswith(other_prefix) or other_prefix.startswith(prefix)
            ):
                yield (
                    f"{loc}.prefix",
                    "prefix-overlap",
                    f"s3://{bucket}/{prefix} overlaps store {other!r} (s3://{bucket}/{other_prefix})",
                )
        seen[(store.bucket, prefix)] = sname
        if isinstance(store, LogStore):
            if not any(f.identity for f in store.fields.values()):
                yield (
                    f"{loc}.fields",
                    "missing-identity",
                    "a log store needs at least one identity field",
                )
            try:
                __import__("datetime").date(2024, 1, 31).strftime(store.partition)
            except ValueError as exc:
                yield (f"{loc}.partition", "structure", f"not a strftime pattern: {exc}")
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
        if isinstance(store, BackupStore) and store.rewrite and system is None:
            continue


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
    for cat, where in used.items():
        if cat not in {c.value for c in dm.categories}:
            yield (
                where,
                "category-undescribed",
                f"category {cat!r} is used here but not described under `categories`",
            )


def _subprocessor_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    names: set[str] = set()
    for i, sp in enumerate(dm.subprocessors):
        loc = f"subprocessors.{i}"
        if sp.name in names:
            yield (f"{loc}.name", "duplicate-name", f"sub-processor {sp.name!r} is listed twice")
        names.add(sp.name)
        ok = {
            "webhook": sp.target.startswith(("http://", "https://")),
            "sns": sp.target.startswith("arn:aws:sns:"),
            "email": "@" in sp.target and " " not in sp.target,
        }[sp.channel]
        if not ok:
            yield (
                f"{loc}.target",
                "bad-target",
                f"{sp.target!r} is not a valid {sp.channel} target",
            )
