"""A deliberately naive second opinion on an erasure: is any target identity still anywhere?

Why naive, on purpose (issue 14, R16.1): the eraser finds personal information where the data map
says it is (identity columns, the relation chain, the log fields the map names) with a matcher
tuned for speed. If the post-erasure check reused that matcher, whatever the eraser cannot see
(an e-mail at an unmapped JSON path, a phone in an unmapped column, a non-JSON line) the check
could not see either, and the receipt would claim "zero residue" falsely. This module shares no
matching code with the eraser (`compliance.core.logfiles`, `compliance.deletion.erase_sql`,
`compliance.requests.resolve`):

- logs: every version of every object under each log store's prefix (every day folder and
  anything else there) is decompressed and its lower-cased bytes are searched for every target
  value's spellings as raw bytes, wherever they stand in a line (any JSON path, any field, not
  JSON at all);
- SQL: every text-like column (String, Text, CHAR, VARCHAR, JSON as reflected from the live
  database, mapped or not) of every mapped table is searched with `LIKE '%value%'`, restricted to
  the request's tenant through the table's own tenant path (plain reflected tables joined here).

Spellings ("variants"): e-mails lower-cased (the haystack is lower-cased too, so any ASCII case
matches); phones in E.164, international and national forms from `phonenumbers` plus the common
NANP spellings (`+14155550123`, `14155550123`, `4155550123`, `(415) 555-0123`, `415-555-0123`,
`415.555.0123`, `415 555 0123`...), in SQL compared on the column's digits (spaces, dashes, dots
and brackets removed); client contact ids and record ids as given. A hit counts only when the
value is not glued to a letter or digit on an edge that is itself a letter or digit
(`ajohn@x.com` is not `john@x.com`; `to=john@x.com` is).

Short ids: record ids (our primary keys, `17`) and contact ids shorter than MIN_ID_CHARS (or
shorter than MIN_MIXED_ID_CHARS when not all digits) would match unrelated numbers everywhere, so
they are not searched as bytes or text. Instead SQL checks that no row of a mapped table the
consumer's rows are erased from still references an erased consumer's key, and that no mapped
`contact_id` identity column of the tenant still equals a short contact id. The receipt says so.

Tenants: a log object is not per tenant. A line holding a hit counts against a request unless the
line is a JSON object whose tenant field (the data map's `tenant_field`) holds one value that is
another tenant's; unparseable lines, lines without the field and lines with conflicting tenant
values count (conservatively). Rows whose tenant path cannot be followed (orphans of a deleted
parent) are searched for every tenant's values.

Kept is not residue (R18, R19): tables with `erase: keep` and `erase: keep` columns of `mask`
tables are not searched (listed in the receipt with their exception codes), the rest of a kept row
is (R16.2); backups are not searched (R18: kept, tombstoned, re-applied on restore) unless the data
map says `rewrite: true`, whose rewritten snapshots are searched, every version (`backup_search`);
deferred requests (legal holds) are not in the batch's erased scope, so their values are not
searched. A scoped legal hold (R19) keeps part of a request: the held tables' rows of the held
consumers are not searched (the rows of the tables below a held table too: they are part of the
held records), the parent rows they need are searched like any other row (their personal columns
must be erased, R16.2), a held consumer's key in a held or parent table is not residue, and the
request's values are not searched in a log store the hold keeps. One more thing is not residue: an
identity found on a target's rows (not one the request gave), sitting in a mapped identity column
of a row owned by a consumer outside the batch, is that other consumer's own identity (a shared
household phone, resolved one step only on purpose, see `compliance.requests.resolve`); so is the
same value in any other column of any row of a consumer outside the batch (their messages to
their own address, or every inbound SMS to a shop's number a lead typed in as their own).
Everything
else is residue: the verdict names the store and object key, or the table and column, with a count,
never the value.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import Engine

from compliance.core.datamap.model import BackupStore, DataMap, LogStore, RecordingStore
from compliance.deletion.residue_oracle.backup_search import verify_backup_store
from compliance.deletion.residue_oracle.log_search import (
    load_verdicts,
    search_object,
    verdict_key,
    verdict_keys,
    verify_log_prefix,
    verify_logs,
)
from compliance.deletion.residue_oracle.sql_search import verify_system
from compliance.deletion.residue_oracle.values import (
    MIN_ID_CHARS,
    MIN_MIXED_ID_CHARS,
    TargetsLike,
    Value,
    Verdict,
    phone_digits,
    phone_spellings,
    request_values,
    searchable_id,
    wanted_values,
)

__all__ = [
    "TargetsLike",
    "Value",
    "Verdict",
    "load_verdicts",
    "phone_digits",
    "phone_spellings",
    "request_values",
    "search_object",
    "searchable_id",
    "statement",
    "verdict_key",
    "verdict_keys",
    "verify",
    "verify_backup_store",
    "verify_log_prefix",
    "verify_logs",
    "verify_system",
    "wanted_values",
]


def verify(
    dm: DataMap,
    engines: dict[str, Engine],
    store_clients: dict[str, Any],
    targets: TargetsLike,
    shard_verdicts: list[dict[str, Any]] | None = None,
) -> Verdict:
    """Search every mapped SQL system and every log store for the batch's targets."""
    values = wanted_values(targets)
    verdict = Verdict()
    active = targets.active_refs()
    if not active:
        return verdict  # every request deferred (R19): nothing was erased, nothing to verify
    held: dict[str, dict[str, list[str]]] = getattr(targets, "held", {}) or {}
    for sname, system in sorted(dm.systems.items()):
        consumers: dict[str, set[str]] = defaultdict(set)
        for ref in active:
            tenant = str(targets.requests[ref]["client_id"])
            consumers[tenant] |= {str(c) for c in targets.consumers.get(sname, {}).get(ref, [])}
        verify_system(
            engines[sname], sname, system, values, consumers, verdict, held.get(sname) or None
        )
    per_store = {
        name: wanted_values(targets, store=name)
        for name, store in dm.stores.items()
        if isinstance(store, LogStore)
    }
    verify_logs(dm, store_clients, values, list(shard_verdicts or []), verdict, per_store)
    for name, store in sorted(dm.stores.items()):  # `rewrite: true`: the snapshots, every version
        if isinstance(store, BackupStore) and store.rewrite:
            system = dm.systems[store.system]
            verify_backup_store(
                store_clients[name], name, store, system, store.system, targets, verdict
            )
    return verdict


def statement(dm: DataMap, verdict: Verdict, values: list[Value]) -> dict[str, Any]:
    """The receipt's account of the independent search (one request's values): how, how much,
    what was skipped and why. Counts and names only."""
    by_kind = Counter(v.kind.value for v in values if v.spellings)
    spellings = sum(len(v.spellings) for v in values)
    short = sum(1 for v in values if not v.spellings)
    out: list[dict[str, Any]] = []
    for name, counts in sorted(verdict.logs.items()):
        out.append(
            {
                "store": name,
                "method": (
                    f"independent raw-byte search of {counts['versions']} decompressed object "
                    f"versions ({counts['objects']} objects) for {sum(by_kind.values())} values "
                    f"with variants ({spellings} spellings: e-mails in any case, phones in E.164 "
                    "and national forms, ids as given)"
                ),
                "objects": counts["objects"],
                "versions": counts["versions"],
                "bytes": counts["bytes"],
                "residue": 0,
            }
        )
    for sname, report in sorted(verdict.sql.items()):
        out.append(
            {
                "system": sname,
                "method": (
                    f"text columns of {report['tables']} tables ({report['columns']} columns, "
                    "reflected from the database, mapped or not) searched in SQL within the "
                    f"request's tenant for {sum(by_kind.values())} values with variants; rows of "
                    "erased tables checked for the consumers' keys"
                ),
                "tables": report["tables"],
                "columns": report["columns"],
                "residue": 0,
                "skipped": [
                    {**k, "why": "erase: keep", "rule": "R19"} for k in report["kept_tables"]
                ]
                + [{**k, "why": "erase: keep", "rule": "R19"} for k in report["kept_columns"]]
                + [
                    {"table": t, "why": "rows kept under a legal hold", "rule": "R19"}
                    for t in report.get("held_tables", [])
                ],
                "other_consumers_identity": report["shared_identity"],
            }
        )
    for name, store in sorted(dm.stores.items()):
        if isinstance(store, BackupStore) and name in verdict.backups:
            counts = verdict.backups[name]
            out.append(
                {
                    "store": name,
                    "method": (
                        f"rewritten snapshots: the current version of every mapped table of "
                        f"{counts['days']} days ({counts['objects']} objects) read with the csv "
                        "module and searched in SQL like the live tables (text columns within "
                        "the request's tenant, the consumers' keys in every table); "
                        f"{counts['noncurrent']} older versions searched as raw bytes"
                    ),
                    **counts,
                    "residue": 0,
                    "rule": "R18",
                }
            )
        elif isinstance(store, BackupStore):
            out.append(
                {
                    "store": name,
                    "skipped": "backups are kept and not searched: tombstoned, the deletion is "
                    "re-applied on restore",
                    "rule": "R18",
                }
            )
        elif isinstance(store, RecordingStore):
            out.append(
                {"store": name, "method": "every version of each erased recording key listed"}
            )
    return {
        "values": dict(sorted(by_kind.items())),
        "short_ids": (
            f"{short} record or contact ids shorter than {MIN_ID_CHARS} digits (or "
            f"{MIN_MIXED_ID_CHARS} characters) are not searched as bytes or text (they would "
            "match unrelated numbers); verified in SQL instead: no row of an erased table "
            "references the consumer's key and no contact id column still holds them"
        ),
        "searched": out,
    }
