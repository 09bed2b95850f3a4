"""The second pass of the check, run once the structure is sound: the cross-reference rules
(tables, columns, relations toward the consumer, tenants, identities, stores, categories,
sub-processors, recipients, deidentification), each yielding (location, rule id, message).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from compliance.core.datamap import paths
from compliance.core.datamap.backup_rules import not_searched_issues
from compliance.core.datamap.graph import RelationError, chain_to_consumer, tenant_path
from compliance.core.datamap.model import (
    Category,
    Column,
    ColumnErase,
    DataMap,
    Field_,
    LogStore,
    RecordingStore,
    SqlSystem,
    Table,
    TableErase,
)
from compliance.core.datamap.provided import provided_issues

# -- cross-reference rules -----------------------------------------------------------------------


def cross_reference_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    for sname, system in dm.systems.items():
        yield from _system_issues(f"systems.{sname}", system)
    yield from _store_issues(dm)
    yield from not_searched_issues(dm)  # R13
    yield from _category_issues(dm)
    yield from _withhold_issues(dm)  # R10
    yield from _subprocessor_issues(dm)
    yield from _deidentification_issues(dm)
    yield from _recipient_issues(dm)
    yield from provided_issues(dm)  # G3


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


# R10: values of these categories are the kinds an access report must never show
_WITHHOLD_CATEGORIES = frozenset({Category.sensitive, Category.biometric})


def _withhold_issues(dm: DataMap) -> Iterator[tuple[str, str, str]]:
    """R10 (Reg 7024(d)): a column or log field in the `sensitive` or `biometric` category must
    say which kind of withheld value it holds (`withhold:`), or its values would be exported
    as they are. The R10 scanner (`access.r10`) catches unmapped values; a mapped one is
    declared here."""
    found: list[tuple[str, Column | Field_]] = [
        (f"systems.{sname}.tables.{tname}.columns.{cname}", col)
        for sname, system in dm.systems.items()
        for tname, table in system.tables.items()
        for cname, col in table.columns.items()
    ]
    found += [
        (f"stores.{sname}.fields.{fname}", fld)
        for sname, store in dm.stores.items()
        if isinstance(store, LogStore)
        for fname, fld in store.fields.items()
    ]
    for where, spec in found:
        cats = _WITHHOLD_CATEGORIES.intersection(spec.categories)
        if cats and spec.withhold is None:
            yield (
                f"{where}.withhold",
                "withhold-required",
                f"{where.rsplit('.', 1)[-1]!r} is in category {sorted(cats)[0]!r}: it needs "
                "`withhold:` (government_id, financial_account, medical_id, password, "
                "security_answer or biometric) so its values never reach an access report (R10)",
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
