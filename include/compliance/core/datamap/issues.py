"""What a data map check reports: `Issue` (where, which rule, what is wrong), the rules by id
(`RULES`, quoted by docs/data-map.md) and `DataMapInvalid`, which lists every issue at once.

Its own module because every pass of the check (structure, cross-references, the live
database) and the retention policy's checker report the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    "withhold-required": "a column or log field in the `sensitive` or `biometric` category "
    "needs `withhold` (the kind of value an access report never shows, R10)",
    "prefix-overlap": "two stores may not share a bucket prefix",
    "not-searched": "a backup store is left out of access reports only when `not_searched` "
    "states all four R13 conditions: not_reasonably_accessible, solely_legal_or_compliance, "
    "not_sold_or_used_commercially, records_described",
    "duplicate-name": "names must be unique (YAML keys, sub-processors, mapped vs ignored tables)",
    "bad-target": "a sub-processor target must fit its channel",
    "recipient-notice": "a recipient that got data through us (R16.4) is told (`channel` and "
    "`target`) or has an `impossible_or_disproportionate` justification, one of the two",
    "provided-derived": "derived data (the `inferences` category) is never marked `provided`: "
    "a portability export holds only what the consumer provided (G3, Art. 20)",
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
