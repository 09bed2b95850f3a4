"""What the consumer *provided* (G3, GDPR Art. 20): the data a portability export holds.

Art. 20 covers personal data the data subject provided: what they gave (forms, messages,
their own account) and, in the EDPB's reading (WP242 rev.01), what the service observed of
their use of it (opens, clicks, visits). It excludes what the controller derived or inferred
(scores, locations looked up from an IP address, voiceprints).

The data map says it in two places (docs/data-map.md): a category's `provided: true` makes
every column and log field of that category provided by default, and a column's or field's own
`provided: true|false` overrides it. A value in several categories is provided when any of its
categories is, unless it says otherwise. Withheld values (R10) never leave the stores, in a
portability export as in an access report.

Rule `provided-derived`: `inferences` are derived by definition, so neither the category nor a
column or field in it may be marked provided.
"""

from __future__ import annotations

from collections.abc import Iterator

from compliance.core.datamap.model import Category, Column, DataMap, Field_

DERIVED = frozenset({Category.inferences})


def is_provided(dm: DataMap, spec: Column | Field_) -> bool:
    """The column or log field holds data the consumer provided (and is not withheld)."""
    if spec.withhold is not None:
        return False
    if spec.provided is not None:
        return spec.provided
    return any(dm.categories[c].provided for c in spec.categories if c in dm.categories)


def provided_columns(dm: DataMap, system: str, table: str) -> list[str]:
    spec = dm.systems[system].tables[table]
    return [name for name, col in spec.columns.items() if is_provided(dm, col)]


def provided_fields(dm: DataMap, store: str) -> list[str]:
    """Paths of a log store's provided fields (`fields` keys; docs/data-map.md path syntax)."""
    spec = dm.stores[store]
    fields = getattr(spec, "fields", {})
    return [path for path, f in fields.items() if is_provided(dm, f)]


def provided_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    """`provided-derived`: derived data is never marked provided (G3)."""
    for cat, info in dm.categories.items():
        if cat in DERIVED and info.provided:
            yield (
                f"categories.{cat.value}.provided",
                "provided-derived",
                f"{cat.value} are derived by us, not provided by the consumer (G3, Art. 20)",
            )
    for sname, system in dm.systems.items():
        for tname, table in system.tables.items():
            for cname, col in table.columns.items():
                if col.provided and DERIVED & set(col.categories):
                    yield (
                        f"systems.{sname}.tables.{tname}.columns.{cname}.provided",
                        "provided-derived",
                        "a column in a derived category (inferences) cannot be provided (G3)",
                    )
    for name, store in dm.stores.items():
        for path, f in getattr(store, "fields", {}).items():
            if f.provided and DERIVED & set(f.categories):
                yield (
                    f"stores.{name}.fields.{path}.provided",
                    "provided-derived",
                    "a field in a derived category (inferences) cannot be provided (G3)",
                )
