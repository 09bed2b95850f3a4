"""The retention policy held against the data map: every mistake found, as (location, rule,
message) triples that `policy_file` turns into located issues.

Targets exist, actions fit targets, R22 (the request log kept at least 24 months), R26
(children's data shortest, never by activity), no two rules fighting over the same rows or
columns, exemptions naming real items.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from compliance.core import workspace_layout
from compliance.core.datamap.graph import time_path
from compliance.core.datamap.model import (
    ColumnErase,
    DataMap,
    RecordingStore,
    SqlSystem,
)
from compliance.retention.policy import (
    IDENTIFYING,
    R22_MINIMUM,
    R22_MINIMUM_TEXT,
    Action,
    Exempt,
    Policy,
    Rule,
    category_columns,
    store_for_prefix,
)

# The YAML line index and the Issue shape are the data map's: one way to say "where" for both
# files (private helpers imported on purpose rather than written twice).
from compliance.retention.workspace import workspace_rule_issues

# -- checks against the data map -----------------------------------------------------------------

Found = tuple[str, str, str]  # (location, rule, message)


def policy_issues(policy: Policy, dm: DataMap) -> Iterator[Found]:
    seen: dict[str, int] = {}
    for i, rule in enumerate(policy.rules):
        loc = f"rules.{i}"
        if rule.id in seen:
            yield (
                f"{loc}.id",
                "duplicate-name",
                f"rule id {rule.id!r} is used twice (first as rules.{seen[rule.id]})",
            )
        seen.setdefault(rule.id, i)
        yield from _rule_issues(loc, rule, dm)
    yield from _overlap_issues(policy, dm)
    yield from _r22_issues(policy)
    yield from _r26_issues(policy, dm)
    for i, ex in enumerate(policy.exempt):
        yield from _exempt_issues(f"exempt.{i}", ex, dm)


def _table(dm: DataMap, ref: str) -> tuple[SqlSystem | None, str, str, str | None]:
    """(system, system name, table name, why not found)."""
    sname, tname = ref.split(".", 1)
    system = dm.systems.get(sname)
    if system is None:
        return None, sname, tname, f"no SQL system {sname!r} in the data map"
    if tname not in system.tables:
        if tname in system.ignore:
            why = f"{ref!r} is listed under `ignore` in the data map: it holds no consumer data"
        else:
            why = f"table {tname!r} is not mapped in system {sname!r}"
        return system, sname, tname, why
    return system, sname, tname, None


def _rule_issues(loc: str, rule: Rule, dm: DataMap) -> Iterator[Found]:
    name = f"rule {rule.id!r}"
    targets = [
        k
        for k in ("table", "category", "store", "prefix", "request_log", "workspace")
        if getattr(rule, k) not in (None, False)
    ]
    if len(targets) != 1:
        given = ", ".join(targets) if targets else "none"
        yield (
            loc,
            "target",
            f"{name} must name exactly one of table, category, store, prefix, request_log, "
            f"workspace (given: {given})",
        )
        return
    for key, period in [("period", rule.period)] + [
        (f"overrides.{c}", p) for c, p in rule.overrides.items()
    ]:
        if period.is_zero:
            yield (f"{loc}.{key}", "period", f"{name}: a retention period must be longer than 0")
    for client in rule.overrides:
        if not client.strip() or client != client.strip() or not client.isprintable():
            yield (
                f"{loc}.overrides.{client.strip() or '?'}",
                "structure",
                f"{name}: a client id is the tenant id as the CRM spells it, without blanks or "
                "control characters",
            )
        elif re.fullmatch(r"-[0-9]+", client):
            yield (f"{loc}.overrides.{client}", "structure", f"{name}: client ids are positive")
    yield from _misplaced_keys(loc, rule)
    kind = targets[0]
    if kind == "table":
        yield from _table_rule_issues(loc, rule, dm)
    elif kind == "category":
        if rule.action is not Action.deidentify:
            yield (
                f"{loc}.action",
                "action",
                f"{name}: a category rule can only de-identify columns (rows mix categories); "
                "to delete rows, name the table",
            )
        if rule.system and rule.system not in dm.systems:
            yield (f"{loc}.system", "target", f"{name}: no SQL system {rule.system!r}")
        elif rule.category is not None:
            found = category_columns(dm, rule.category, rule.system)
            if not found:
                yield (
                    f"{loc}.category",
                    "target",
                    f"{name}: no mapped column of category {rule.category.value!r} can be "
                    "de-identified (none, or all kept under an exception)",
                )
            elif len({s for s, _, _ in found}) > 1:
                yield (
                    f"{loc}.system",
                    "target",
                    f"{name}: category {rule.category.value!r} is in several SQL systems; add "
                    "`system:` (one rule per system)",
                )
    elif kind in ("store", "prefix"):
        store_name = rule.store or store_for_prefix(dm, rule.prefix or "")
        store = dm.stores.get(store_name or "")
        if store is None:
            what = f"store {rule.store!r}" if rule.store else f"no store at {rule.prefix!r}"
            yield (f"{loc}.{kind}", "target", f"{name}: {what} is not in the data map")
        elif isinstance(store, RecordingStore):
            yield (
                f"{loc}.{kind}",
                "target",
                f"{name}: recordings expire with the rows that point at them: write a rule for "
                f"table {store.system}.{store.table} instead",
            )
        if rule.action is not Action.delete:
            yield (f"{loc}.action", "action", f"{name}: objects can only be deleted")
        if rule.overrides:
            yield (
                f"{loc}.overrides",
                "action",
                f"{name}: objects mix clients, so per-client overrides do not apply to stores",
            )
    elif kind == "workspace":
        yield from workspace_rule_issues(loc, rule)
    else:  # request log
        if rule.action is not Action.delete:
            yield (f"{loc}.action", "action", f"{name}: request records can only be deleted")


def _misplaced_keys(loc: str, rule: Rule) -> Iterator[Found]:
    name = f"rule {rule.id!r}"
    consumer_keys = {
        "consumers": rule.consumers != "all",
        "since": rule.since is not None,
        "activity": rule.activity is not None,
        "lifetime": bool(rule.lifetime),
    }
    if rule.action is not Action.expire_consumers:
        for key, given in consumer_keys.items():
            if given:
                yield (f"{loc}.{key}", "action", f"{name}: `{key}` applies to expire_consumers")
    if rule.columns and not (rule.action is Action.deidentify and rule.table):
        yield (f"{loc}.columns", "action", f"{name}: `columns` applies to table deidentify rules")
    if rule.aggregate and rule.action is not Action.aggregate:
        yield (f"{loc}.aggregate", "action", f"{name}: `aggregate` applies to aggregate rules")
    if rule.noncurrent is not None and not (rule.store or rule.prefix):
        yield (f"{loc}.noncurrent", "action", f"{name}: `noncurrent` applies to store rules")
    if rule.system and not rule.category:
        yield (f"{loc}.system", "action", f"{name}: `system` applies to category rules")
    if rule.after is not None and not rule.workspace:
        yield (f"{loc}.after", "action", f"{name}: `after` applies to workspace rules")


def _table_rule_issues(loc: str, rule: Rule, dm: DataMap) -> Iterator[Found]:
    name = f"rule {rule.id!r}"
    system, sname, tname, why = _table(dm, rule.table or "")
    if why or system is None:
        yield (f"{loc}.table", "target", f"{name}: {why}")
        return
    spec = system.tables[tname]
    is_consumer = tname == system.consumer_table
    if time_path(system, tname) is None:
        yield (
            f"{loc}.table",
            "undated",
            f"{name}: {sname}.{tname} has no time_column and no table up its relation chain has "
            "one, so its rows cannot be expired by age: add a time_column (to it or a parent), "
            "or exempt it with a reason (R27)",
        )
        return
    if rule.action is Action.expire_consumers:
        if not is_consumer:
            yield (
                f"{loc}.action",
                "action",
                f"{name}: expire_consumers acts on the consumer table "
                f"{sname}.{system.consumer_table}, not {tname!r}",
            )
        if rule.consumers == "minors" and rule.effective_since != "created":
            yield (
                f"{loc}.since",
                "R26",
                f"{name}: children's data is never kept indefinitely (R26): it expires a period "
                "after it was collected (`since: created`), not after inactivity",
            )
        for key in ("activity", "lifetime"):
            for t in getattr(rule, key) or []:
                if t not in system.tables:
                    yield (
                        f"{loc}.{key}",
                        "target",
                        f"{name}: table {t!r} is not mapped in {sname!r}",
                    )
        if rule.activity is not None and rule.effective_since == "created":
            yield (f"{loc}.activity", "action", f"{name}: `activity` needs since: last_activity")
        return
    if is_consumer and rule.action in (Action.delete, Action.aggregate):
        yield (
            f"{loc}.action",
            "action",
            f"{name}: rows of the consumer table are consumers: use expire_consumers, which "
            "erases their rows in every table first",
        )
    if rule.action is Action.deidentify:
        if not rule.columns:
            yield (f"{loc}.columns", "action", f"{name}: list the `columns` to de-identify")
        for col in rule.columns:
            c = spec.columns.get(col)
            if c is None:
                yield (
                    f"{loc}.columns",
                    "target",
                    f"{name}: {col!r} is not a mapped column of {sname}.{tname}",
                )
            elif c.erase is ColumnErase.keep:
                yield (
                    f"{loc}.columns",
                    "action",
                    f"{name}: {sname}.{tname}.{col} is kept under exception "
                    f"{c.exception.value if c.exception else '?'} (erase: keep): exempt it instead",
                )
    if rule.action is Action.aggregate:
        for col in rule.aggregate.by if rule.aggregate else []:
            c = spec.columns.get(col)
            if c is None:
                yield (
                    f"{loc}.aggregate.by",
                    "aggregate-identifying",
                    f"{name}: {col!r} is not a mapped column of {sname}.{tname}, so nothing "
                    "shows it identifies no one",
                )
            elif c.identity or c.withhold or set(c.categories) & IDENTIFYING:
                cats = ", ".join(x.value for x in c.categories)
                yield (
                    f"{loc}.aggregate.by",
                    "aggregate-identifying",
                    f"{name}: grouping by {col!r} ({cats}) would keep identifying values",
                )


def _overlap_issues(policy: Policy, dm: DataMap) -> Iterator[Found]:
    deleting: dict[str, str] = {}
    expiring: dict[tuple[str, str], str] = {}
    deid: dict[str, str] = {}
    stores: dict[str, str] = {}
    areas: dict[str, str] = {}
    for i, rule in enumerate(policy.rules):
        loc = f"rules.{i}"
        if rule.table and rule.action in (Action.delete, Action.aggregate):
            if rule.table in deleting:
                yield (
                    loc,
                    "overlap",
                    f"rules {deleting[rule.table]!r} and {rule.id!r} both delete rows of "
                    f"{rule.table}: use one rule with per-client overrides",
                )
            deleting.setdefault(rule.table, rule.id)
        if rule.action is Action.expire_consumers and rule.table:
            key = (rule.table.split(".")[0], rule.consumers)
            if key in expiring:
                yield (
                    loc,
                    "overlap",
                    f"rules {expiring[key]!r} and {rule.id!r} both expire {rule.consumers} "
                    f"consumers of {key[0]!r}",
                )
            expiring.setdefault(key, rule.id)
        if rule.action is Action.deidentify:
            cols: list[str] = []
            if rule.table:
                cols = [f"{rule.table}.{c}" for c in rule.columns]
            elif rule.category:
                for s, t, cs in category_columns(dm, rule.category, rule.system):
                    cols += [f"{s}.{t}.{c}" for c in cs]
            for col in cols:
                if col in deid and deid[col] != rule.id:
                    yield (
                        loc,
                        "overlap",
                        f"rules {deid[col]!r} and {rule.id!r} both de-identify {col}",
                    )
                deid.setdefault(col, rule.id)
        store = rule.store or (store_for_prefix(dm, rule.prefix) if rule.prefix else None)
        if store:
            if store in stores:
                yield (
                    loc,
                    "overlap",
                    f"rules {stores[store]!r} and {rule.id!r} both expire {store}",
                )
            stores.setdefault(store, rule.id)
        if rule.workspace:
            if rule.workspace in areas:
                yield (
                    loc,
                    "overlap",
                    f"rules {areas[rule.workspace]!r} and {rule.id!r} both expire workspace area "
                    f"{rule.workspace}",
                )
            areas.setdefault(rule.workspace, rule.id)


def _r22_issues(policy: Policy) -> Iterator[Found]:
    logs = [(i, r) for i, r in enumerate(policy.rules) if r.request_log]
    if not logs:
        yield (
            "rules",
            "R22",
            "no rule for the request log (request_log: true): say how long request records are "
            f"kept, at least {R22_MINIMUM_TEXT} (R22)",
        )
    for n, (i, rule) in enumerate(logs):
        if n:
            yield (f"rules.{i}", "overlap", f"rule {rule.id!r}: the request log has one rule only")
        for client, period in rule.periods().items():
            if not period.at_least(R22_MINIMUM):
                where = "period" if client is None else f"overrides.{client}"
                who = "" if client is None else f" for client {client}"
                yield (
                    f"rules.{i}.{where}",
                    "R22",
                    f"rule {rule.id!r}: request records{who} are kept at least "
                    f"{R22_MINIMUM_TEXT} (R22); {period} can be shorter",
                )


def _r26_issues(policy: Policy, dm: DataMap) -> Iterator[Found]:
    parts = policy.minors.flag.split(".")
    sname, tname, col = parts
    system = dm.systems.get(sname)
    if system is None:
        yield ("minors.flag", "R26", f"no SQL system {sname!r} in the data map")
        return
    if tname != system.consumer_table:
        yield (
            "minors.flag",
            "R26",
            f"the children flag lives on the consumer table {sname}.{system.consumer_table}",
        )
        return
    if col not in system.tables[tname].columns:
        yield ("minors.flag", "R26", f"{col!r} is not a mapped column of {sname}.{tname}")
    minors = [
        (i, r)
        for i, r in enumerate(policy.rules)
        if r.action is Action.expire_consumers and r.consumers == "minors"
    ]
    for i, rule in minors:
        if rule.table and rule.table.split(".")[0] != sname:
            yield (
                f"rules.{i}.table",
                "R26",
                f"rule {rule.id!r}: minors are flagged in {sname!r} (minors.flag)",
            )
    mine = [(i, r) for i, r in minors if r.table and r.table.split(".")[0] == sname]
    if not mine:
        yield (
            "rules",
            "R26",
            f"no expire_consumers rule with `consumers: minors` for {sname!r}: children's data "
            "needs its own, shortest, period (R26)",
        )
        return
    i, minor = mine[0]
    others = [
        r
        for r in policy.rules
        if r is not minor
        and r.table
        and r.table.split(".")[0] == sname
        and r.action in (Action.delete, Action.aggregate, Action.expire_consumers)
    ]
    clients = sorted({c for r in [minor, *others] for c in r.overrides})
    for client in [None, *clients]:
        mine = minor.overrides.get(client, minor.period) if client else minor.period
        longer = []
        for other in others:
            if client is not None and client not in minor.overrides | other.overrides:
                continue  # same periods as the default: reported once, above
            theirs = other.overrides.get(client, other.period) if client else other.period
            if not mine.shorter_than(theirs):
                longer.append(f"{other.id!r} ({theirs})")
        if longer:
            who = "" if client is None else f" for client {client}"
            where = f"overrides.{client}" if client in minor.overrides else "period"
            yield (
                f"rules.{i}.{where}",
                "R26",
                f"rule {minor.id!r}: children's data must have the shortest period (R26), but "
                f"{mine}{who} is not shorter than {', '.join(longer)}",
            )


def _exempt_issues(loc: str, ex: Exempt, dm: DataMap) -> Iterator[Found]:
    given = [k for k in ("table", "column", "store", "workspace") if getattr(ex, k)]
    if len(given) != 1:
        yield (loc, "exempt", "an exemption names exactly one of table, column, store, workspace")
        return
    if not ex.reason.strip():
        yield (f"{loc}.reason", "exempt", "an exemption needs a reason")
    if ex.workspace:
        if ex.workspace not in workspace_layout.BY_NAME:
            known = ", ".join(a.name for a in workspace_layout.AREAS)
            yield (
                f"{loc}.workspace",
                "exempt",
                f"{ex.workspace!r} is not an area of the workspace bucket (areas: {known})",
            )
        return
    if ex.store:
        if ex.store not in dm.stores:
            yield (f"{loc}.store", "exempt", f"store {ex.store!r} is not in the data map")
        return
    ref = ex.table or ".".join((ex.column or "").split(".")[:2])
    system, sname, tname, why = _table(dm, ref)
    if why or system is None:
        yield (f"{loc}.{given[0]}", "exempt", str(why))
        return
    if ex.column:
        col = ex.column.split(".")[2]
        if col not in system.tables[tname].columns:
            yield (f"{loc}.column", "exempt", f"{col!r} is not a mapped column of {sname}.{tname}")
