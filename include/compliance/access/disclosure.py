"""What an access report says *about* the data: categories, sources, purposes, recipients,
retention (R8, R27), what is held but never shown (R10) and what was not searched (R13).

Everything comes from the two declarations the project already keeps: the data map (`categories:`
with description, sources, purposes and third parties; `withhold` on columns and fields; backup
stores) and the retention policy (`config/retention.yaml`, `compliance.retention`). Nothing here
is written twice, so the report cannot drift from what the jobs actually do. When the retention
policy cannot be read, each category says "see retention policy" instead of guessing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compliance.core.datamap.model import (
    BackupStore,
    Category,
    DataMap,
    LogStore,
    RecordingStore,
    Withhold,
)

log = logging.getLogger(__name__)

SEE_POLICY = "see retention policy"

# Stat 1798.140(v)(1) wording, shortened, for the report's headings (R8).
TITLES: dict[Category, str] = {
    Category.identifiers: "Identifiers",
    Category.customer_records: "Customer records (Cal. Civ. Code 1798.80(e))",
    Category.protected_characteristics: "Characteristics of protected classifications",
    Category.commercial: "Commercial information",
    Category.biometric: "Biometric information",
    Category.internet_activity: "Internet or other electronic network activity",
    Category.geolocation: "Geolocation data",
    Category.sensory: "Audio, electronic, visual or similar information",
    Category.professional: "Professional or employment-related information",
    Category.education: "Education information",
    Category.inferences: "Inferences drawn to create a profile",
    Category.sensitive: "Sensitive personal information",
}

# R10: the type, stated with particularity; the value is never output.
WITHHELD: dict[Withhold, str] = {
    Withhold.government_id: "a government identification number (such as a driver's licence)",
    Withhold.financial_account: "a financial account number",
    Withhold.medical_id: "a health-insurance or medical identification number",
    Withhold.password: "an account password (stored as a hash)",
    Withhold.security_answer: "a security question or its answer",
    Withhold.biometric: "biometric data (such as a voiceprint derived from a call)",
}
WITHHELD_CELL = "held; value withheld (R10)"


def withheld_statement(kind: Withhold | str, field: str) -> str:
    """e.g. "A financial account number is held (field bank_account); the value is withheld
    (R10)."."""
    what = WITHHELD[Withhold(kind)]
    return f"{what[0].upper()}{what[1:]} is held (field {field}); the value is withheld (R10)."


def not_searched(dm: DataMap) -> list[dict[str, Any]]:
    """R13: the record stores skipped, each with the four conditions as the data map states
    them (`BackupStore.not_searched`, all four required by the validator). A backup store
    without that block is searched, so it is not listed: nothing is skipped silently."""
    out = []
    for name, store in sorted(dm.stores.items()):
        if not isinstance(store, BackupStore) or store.not_searched is None:
            continue
        why = store.not_searched
        conditions = {
            "not_reasonably_accessible": why.not_reasonably_accessible or "",
            "solely_legal_or_compliance": why.solely_legal_or_compliance or "",
            "not_sold_or_used_commercially": why.not_sold_or_used_commercially or "",
            "records_described": why.records_described or "",
        }
        out.append(
            {
                "store": name,
                "description": conditions["records_described"],
                "reason": (
                    f"Not searched (R13): {conditions['not_reasonably_accessible']} "
                    f"{conditions['solely_legal_or_compliance']} "
                    f"{conditions['not_sold_or_used_commercially']}"
                ),
                "conditions": conditions,
                "rule": "R13",
            }
        )
    return out


def category_info(dm: DataMap, category: Category) -> dict[str, Any]:
    """R8: description, sources, purposes, third parties of one category, from the data map."""
    info = dm.categories.get(category)
    return {
        "category": category.value,
        "title": TITLES.get(category, category.value),
        "description": info.description if info else "",
        "sources": list(info.sources) if info else [],
        "purposes": list(info.purposes) if info else [],
        "third_parties": list(info.third_parties) if info else [],
    }


def mapped_categories(dm: DataMap) -> list[Category]:
    """Every category the data map says we hold for the businesses' consumers (columns, log
    fields, recordings), in the statute's order: the categories page of a request the business
    verified only for categories (R5), where no record of the consumer is read (R8)."""
    held: set[Category] = set()
    for system in dm.systems.values():
        for table in system.tables.values():
            for col in table.columns.values():
                held.update(col.categories)
    for store in dm.stores.values():
        if isinstance(store, LogStore):
            for fld in store.fields.values():
                held.update(fld.categories)
        elif isinstance(store, RecordingStore):
            held.update(store.categories)
    return [c for c in Category if c in held]


# -- retention (R27) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    """Retention lines by where the data sits, for one client (its overrides applied).

    Keys: "system.table" (row rules), "system.table.column" (column rules), "store:name",
    "category:name" (category rules). `available` is False when no policy could be read.
    """

    lines: dict[str, tuple[str, ...]]
    available: bool

    def for_category(self, dm: DataMap, category: Category) -> list[str]:
        if not self.available:
            return [SEE_POLICY]
        found: list[str] = []
        for sname, system in dm.systems.items():
            for tname, table in system.tables.items():
                cols = [c for c, col in table.columns.items() if category in col.categories]
                if not cols:
                    continue
                found += self._table(dm, sname, tname)
                for c in cols:
                    found += self.lines.get(f"{sname}.{tname}.{c}", ())
        for name, store in dm.stores.items():
            if isinstance(store, LogStore) and any(
                category in f.categories for f in store.fields.values()
            ):
                found += self.lines.get(f"store:{name}", ())
            if isinstance(store, RecordingStore) and category in store.categories:
                found += self._table(dm, store.system, store.table)
        found += self.lines.get(f"category:{category.value}", ())
        return list(dict.fromkeys(found)) or [SEE_POLICY]

    def _table(self, dm: DataMap, sname: str, tname: str) -> list[str]:
        """A table's own lines, else its parent's (rows go with the row they belong to)."""
        seen: set[str] = set()
        system = dm.systems[sname]
        current: str | None = tname
        while current and current not in seen:
            seen.add(current)
            own = self.lines.get(f"{sname}.{current}")
            if own:
                if current == tname:
                    return list(own)
                return [
                    f"{sname}.{tname}: kept as long as its {sname}.{current} record; {x}"
                    for x in own
                ]
            relation = system.tables[current].relation
            current = relation.target_table if relation else None
        return []


def load_policy(path: str | Path, dm: DataMap) -> Any | None:
    """The retention policy (`compliance.retention`), or None when it cannot be read: a missing
    or broken policy must not block access reports, which then say "see retention policy"."""
    try:
        from compliance.retention import load_policy as load

        return load(path, dm).policy
    except Exception as exc:
        log.warning(
            "retention policy unavailable (%s): reports say %r", type(exc).__name__, SEE_POLICY
        )
        return None


def retention_lines(policy: Any | None, dm: DataMap, client_id: object) -> Retention:
    """Turn policy rules into plain sentences for one client (its per-client overrides win)."""
    if policy is None:
        return Retention({}, available=False)
    lines: dict[str, list[str]] = {}

    def add(key: str, text: str) -> None:
        lines.setdefault(key, []).append(text)

    client = str(client_id)  # overrides are keyed by the tenant id as text
    for rule in policy.rules:
        period = str(rule.overrides.get(client, rule.period))
        action = str(getattr(rule.action, "value", rule.action))
        why = f" (purpose: {rule.purpose})"
        if rule.table:
            if action == "expire_consumers":
                who = "children's records" if rule.consumers == "minors" else "records"
                basis = (
                    "after collection"
                    if rule.effective_since == "created"
                    else "after the consumer's last activity"
                )
                add(rule.table, f"{rule.table}: {who} erased {period} {basis}{why}")
                sname = rule.table.split(".", 1)[0]
                for t in rule.lifetime:
                    add(
                        f"{sname}.{t}",
                        f"{sname}.{t}: kept as long as the consumer's record, which is erased "
                        f"{period} {basis}{why}",
                    )
            elif action == "deidentify":
                for col in rule.columns:
                    add(
                        f"{rule.table}.{col}",
                        f"{rule.table}.{col}: de-identified {period} after collection{why}",
                    )
            elif action == "aggregate":
                add(
                    rule.table,
                    f"{rule.table}: replaced by anonymous monthly counts {period} after "
                    f"collection{why}",
                )
            else:
                add(rule.table, f"{rule.table}: deleted {period} after collection{why}")
        elif rule.category:
            add(
                f"category:{rule.category.value}",
                f"{rule.category.value} columns: de-identified {period} after collection{why}",
            )
        elif rule.store:
            add(f"store:{rule.store}", f"{rule.store}: deleted {period} after collection{why}")
    for ex in policy.exempt:
        target = ex.column or ex.table or f"store:{ex.store}"
        add(target, f"{ex.target_text()}: kept without a fixed period ({ex.reason})")
    return Retention({k: tuple(v) for k, v in lines.items()}, available=True)
