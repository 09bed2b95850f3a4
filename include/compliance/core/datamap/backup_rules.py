"""R13 in the data map: a backup store is left out of access reports only when the map states
all four conditions for it, in words the report can quote (`BackupStore.not_searched`).

Its own module because the rule reads differently from the other cross-references: it checks
statements, not names. Without `not_searched` a backup store is searched (the access job
streams its snapshots, `compliance.access.gather_backups`), so a map can never skip one by
omission; a `not_searched:` with a condition missing or blank is refused, naming the key.
"""

from __future__ import annotations

from collections.abc import Iterator

from compliance.core.datamap.model import BackupStore, DataMap

# key -> what it must state (R13; Cal. Code Regs. tit. 11, 7024(c)).
CONDITIONS: dict[str, str] = {
    "not_reasonably_accessible": "why the records are not reasonably accessible or searchable",
    "solely_legal_or_compliance": "that they are kept solely for legal or compliance purposes",
    "not_sold_or_used_commercially": "that they are not sold or used for any commercial purpose",
    "records_described": "the categories of records that are not searched (the report says so)",
}


def not_searched_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    """One issue per backup store whose `not_searched` is empty, or per condition missing."""
    for name, store in dm.stores.items():
        if not isinstance(store, BackupStore):
            continue
        loc = f"stores.{name}.not_searched"
        block = store.not_searched
        if block is None:
            if "not_searched" in store.model_fields_set:  # `not_searched:` with nothing under it
                yield (
                    loc,
                    "not-searched",
                    "R13: `not_searched` is empty; state all four conditions ("
                    + ", ".join(CONDITIONS)
                    + "), or remove the key so access reports search the store",
                )
            continue
        for key, what in CONDITIONS.items():
            if not (getattr(block, key) or "").strip():
                yield (
                    f"{loc}.{key}",
                    "not-searched",
                    f"R13: `{key}` is missing or empty: state {what}; a backup store is left "
                    "out of access reports only when all four R13 conditions hold",
                )
