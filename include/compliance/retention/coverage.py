"""The coverage gate (R27): nothing personal in the data map is kept without a rule or a reason.

Every mapped column of every SQL table, every log and backup store, and every area of the jobs'
own workspace bucket that can hold personal data (`core.workspace_layout`: request documents,
batch targets, access bundles, notices...) must be bounded in time by a rule (its rows deleted
or aggregated, its consumer expired, the column de-identified, the area's objects expired) or be
exempt with a reason. Recordings are covered when the rows pointing at them are. A new column
or store added to the data map without a rule therefore fails `python -m compliance retention
check` (and `make lint`), instead of being kept forever by omission.

What covers a column:
- a `delete` or `aggregate` rule on its table or on a parent table (its rows go, children with
  their parent row);
- an `expire_consumers` rule for all consumers, for the consumer table itself and the tables it
  lists under `lifetime` (kept as long as the consumer, gone with it);
- a `deidentify` rule listing the column, or a category rule for one of its categories.
A children-only rule covers nothing on its own: adults' data would still be unbounded.

A table with no time column and no dated table up its relation chain (possible only when the
consumer table has none either) cannot be expired by age: no rule may target it (the policy check
says `undated`) and category rules pass over it, so its columns are uncovered unless exempt, and
the gate says why rather than just "uncovered".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from compliance.core import workspace_layout
from compliance.core.datamap.graph import time_path
from compliance.core.datamap.model import ColumnErase, DataMap, RecordingStore
from compliance.core.datamap.validate import Issue
from compliance.retention.policy import (
    Action,
    Policy,
    descendants,
    object_stores,
    store_for_prefix,
)


@dataclass
class Coverage:
    """item -> what covers it (a rule id, or `exempt: <reason>`), and what nothing covers."""

    covered: dict[str, str] = field(default_factory=dict)
    uncovered: list[str] = field(default_factory=list)
    exempt_and_covered: list[tuple[str, str]] = field(default_factory=list)  # (item, rule)
    undated: set[str] = field(default_factory=set)  # "system.table" items with no time at all

    def issues(self) -> list[Issue]:
        out = [Issue(item, "uncovered", self._why_uncovered(item)) for item in self.uncovered]
        out += [
            Issue(
                item,
                "exempt-covered",
                f"exempt, but rule {rule!r} also covers it: drop one of the two",
            )
            for item, rule in self.exempt_and_covered
        ]
        return out

    def _why_uncovered(self, item: str) -> str:
        if item.startswith("workspace:"):
            area = workspace_layout.BY_NAME[item.removeprefix("workspace:")]
            return (
                f"the workspace area {area.name!r} ({area.prefix}: {area.holds}) can hold "
                f"personal data, but no rule expires it and it is not exempt (R27): add a rule "
                f"with `workspace: {area.name}` or an `exempt` entry with a reason"
            )
        table = ".".join(item.split(".")[:2])
        if table in self.undated:
            return (
                f"no rule can expire it by age: table {table} has no time_column and no table up "
                "its relation chain has one (R27): exempt it with a reason, or add a time_column "
                "to it or to a parent table"
            )
        return (
            "no rule deletes, expires or de-identifies it and it is not exempt (R27): add a "
            "rule or an `exempt` entry with a reason"
        )


def coverage(policy: Policy, dm: DataMap) -> Coverage:
    """Which personal-information items of the data map are covered, and by what."""
    by_rule = _rule_cover(policy, dm)
    exempt: dict[str, str] = {}
    for ex in policy.exempt:
        exempt[ex.target_text()] = f"exempt: {ex.reason.strip()}"
    cov = Coverage()
    cov.undated = {
        f"{sname}.{tname}"
        for sname, system in dm.systems.items()
        for tname in system.tables
        if time_path(system, tname) is None
    }
    for item, table_item in _items(dm):
        rule = by_rule.get(item) or (by_rule.get(table_item) if table_item else None)
        ex = exempt.get(item) or (exempt.get(table_item) if table_item else None)
        if rule and ex:
            cov.exempt_and_covered.append((item, rule))
        if rule or ex:
            cov.covered[item] = rule or ex or ""
        else:
            cov.uncovered.append(item)
    return cov


def _items(dm: DataMap) -> Iterator[tuple[str, str | None]]:
    """(item, its table item or None): every mapped column, and every store."""
    for sname, system in dm.systems.items():
        for tname, table in system.tables.items():
            for cname in table.columns:
                yield f"{sname}.{tname}.{cname}", f"{sname}.{tname}"
    for name in dm.stores:
        yield f"store:{name}", None
    for area in workspace_layout.personal_areas():  # the jobs' own copies (issue 16)
        yield f"workspace:{area.name}", None


def _rule_cover(policy: Policy, dm: DataMap) -> dict[str, str]:
    """item (a table, a column or a store) -> the first rule covering it."""
    out: dict[str, str] = {}
    for rule in policy.rules:
        if rule.table:
            sname, tname = rule.table.split(".", 1)
            system = dm.systems.get(sname)
            if system is None:
                continue
            if rule.action in (Action.delete, Action.aggregate):
                out.setdefault(rule.table, rule.id)
                for child in descendants(system, tname):  # deleted with their parent row
                    out.setdefault(f"{sname}.{child}", rule.id)
            elif rule.action is Action.expire_consumers and rule.consumers == "all":
                for t in [tname, *rule.lifetime]:
                    out.setdefault(f"{sname}.{t}", rule.id)
            elif rule.action is Action.deidentify:
                for col in rule.columns:
                    out.setdefault(f"{rule.table}.{col}", rule.id)
        elif rule.category:
            for sname, system in dm.systems.items():
                if rule.system and sname != rule.system:
                    continue
                for tname, table in system.tables.items():
                    if time_path(system, tname) is None:
                        continue  # undated: the sweep passes over it (policy.category_columns)
                    for cname, col in table.columns.items():
                        if rule.category in col.categories and col.erase is not ColumnErase.keep:
                            out.setdefault(f"{sname}.{tname}.{cname}", rule.id)
        elif rule.store or rule.prefix:
            name = rule.store or store_for_prefix(dm, rule.prefix or "")
            if name in object_stores(dm):
                out.setdefault(f"store:{name}", rule.id)
        elif rule.workspace:
            out.setdefault(f"workspace:{rule.workspace}", rule.id)
    # Recordings go with the rows that point at them (the sweep deletes the audio first).
    for name, store in dm.stores.items():
        if isinstance(store, RecordingStore):
            table = f"{store.system}.{store.table}"
            if table in out:
                out.setdefault(f"store:{name}", out[table])
    return out
