"""The residue oracle in SQL: every text-like column of every mapped table, mapped or not, searched
with LIKE within the request's tenant; erased tables checked for the consumers' keys (R16.1).

Kept is not residue (R18, R19): `erase: keep` tables and columns and rows a legal hold keeps are
not searched; see the package's docstring for the shared-identity exception.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap.graph import chain_to_consumer, tenant_path
from compliance.core.datamap.model import (
    ColumnErase,
    IdentityType,
    SqlSystem,
    TableErase,
)
from compliance.core.sqlmap import KeyTypeError, typed_value, typed_values
from compliance.deletion.residue_oracle.values import Value, Verdict, bounded, phone_digits

SQL_TERMS = 64  # LIKE terms per statement
PHONE_STRIP = " -().+"  # removed from a column's text before its digits are compared


def _text_like(column: sa.Column) -> bool:
    kind = column.type
    if isinstance(kind, sa.types.NullType):
        return True  # SQLite without a declared type: text may be stored there
    return isinstance(kind, sa.String | sa.JSON) and not isinstance(kind, sa.Enum)


@dataclass
class _Joined:
    """A mapped table outer-joined toward its tenant and consumer (plain reflected tables)."""

    base: sa.Table
    from_clause: sa.FromClause
    tenant: sa.ColumnElement
    consumer: sa.ColumnElement
    depth: int  # hops to the consumer table


def _join(md: sa.MetaData, system: SqlSystem, name: str) -> _Joined:
    hops = chain_to_consumer(system, name)
    tenant_hops, tenant_col = tenant_path(system, name)
    base = md.tables[name]
    if not hops:
        pk = system.tables[name].key_columns[0]
        return _Joined(base, base, base.c[tenant_col], base.c[pk], 0)
    needed = max(len(hops) - 1, len(tenant_hops))
    from_clause: sa.FromClause = base
    current: sa.FromClause = base
    joined: dict[str, sa.FromClause] = {name: base}
    for i, hop in enumerate(hops[:needed]):
        target = md.tables[hop.target_table].alias(f"oracle_hop{i}")
        # Outer joins: a row whose parent is gone (an orphan) is still searched.
        from_clause = from_clause.outerjoin(
            target, current.c[hop.column] == target.c[hop.target_column]
        )
        joined[hop.target_table] = target
        current = target
    last = hops[-1]
    tenant_table = joined[tenant_hops[-1].target_table] if tenant_hops else base
    return _Joined(
        base, from_clause, tenant_table.c[tenant_col], joined[last.table].c[last.column], len(hops)
    )


def _tenant_filter(joined: _Joined, tenant: str) -> sa.ColumnElement:
    try:
        return joined.tenant == typed_value(joined.tenant, tenant)
    except KeyTypeError:  # a tenant the column cannot hold owns no row
        return sa.false()


def _haystack(columns: list[sa.Column]) -> sa.ColumnElement:
    parts: list[sa.ColumnElement] = []
    for col in columns:
        plain = isinstance(col.type, sa.String) and not isinstance(col.type, sa.JSON)
        expr = col if plain else sa.cast(col, sa.Text)
        parts.append(sa.func.coalesce(expr, "", type_=sa.Text))
    text = parts[0]
    for part in parts[1:]:
        text = text + sa.literal("\n") + part
    return sa.func.lower(text)


def _digits(expr: sa.ColumnElement) -> sa.ColumnElement:
    for ch in PHONE_STRIP:
        expr = sa.func.replace(expr, ch, "")
    return expr


def _found_in(value: Value, cell: Any) -> bool:
    """The Python side of a SQL candidate: the value really is in this cell, bounded."""
    if cell is None:
        return False
    text = cell if isinstance(cell, str) else json.dumps(cell, default=str, ensure_ascii=False)
    text = text.lower()
    raw = text.encode()
    if any(next(bounded(raw, s.encode()), None) is not None for s in value.spellings):
        return True
    if value.kind is IdentityType.phone:
        stripped = text.translate({ord(c): None for c in PHONE_STRIP}).encode()
        return any(
            next(bounded(stripped, d.encode()), None) is not None for d in phone_digits(value.text)
        )
    return False


def _term(value: Value, low: sa.ColumnElement, digits: sa.ColumnElement) -> sa.ColumnElement:
    if value.kind is IdentityType.phone:
        forms = phone_digits(value.text)
        if forms:
            return digits.contains(min(forms, key=len), autoescape=True)
    spellings = sorted(value.spellings)
    return sa.or_(*(low.contains(s, autoescape=True) for s in spellings))


def verify_system(
    engine: Engine,
    sname: str,
    system: SqlSystem,
    values: list[Value],
    consumers: dict[str, set[str]],
    verdict: Verdict,
    held: dict[str, list[str]] | None = None,
) -> None:
    """Text columns of every mapped table, per tenant; then the short ids by key (module doc).

    `consumers`: tenant -> the erased consumers' keys (text) of this system. `held`: consumer
    key -> tables a legal hold keeps whole of it (R19): those rows are not searched, and the
    consumer's key in them and in the parent rows they need is not residue.
    """
    kept_of: dict[str, set[str]] = defaultdict(set)  # table -> consumers whose rows are kept
    exempt: dict[str, set[str]] = defaultdict(set)  # table -> consumers whose key may stay
    for consumer, tables in (held or {}).items():
        for t in tables:
            kept_of[t].add(consumer)
            exempt[t].add(consumer)
            for hop in chain_to_consumer(system, t):
                exempt[hop.target_table].add(consumer)
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names())
    missing = sorted(set(system.tables) - present)
    if missing:
        raise RuntimeError(f"{sname}: mapped tables missing from the database: {missing}")
    md = sa.MetaData()
    md.reflect(engine, only=sorted(system.tables))
    by_tenant: dict[str, list[Value]] = defaultdict(list)
    for value in values:
        if value.spellings:
            by_tenant[value.tenant].append(value)
    every = [v for vs in by_tenant.values() for v in vs]
    report: dict[str, Any] = {
        "tables": 0,
        "columns": 0,
        "values": len(every),
        "shared_identity": 0,
        "kept_tables": [],
        "kept_columns": [],
        "held_tables": sorted(kept_of),
    }
    verdict.sql[sname] = report
    shared = _Shared()
    with engine.connect() as conn:
        for tname, spec in sorted(system.tables.items()):
            if spec.erase is TableErase.keep:
                report["kept_tables"].append(
                    {"table": tname, "exception": spec.exception and spec.exception.value}
                )
                continue
            kept = {
                c
                for c, col in spec.columns.items()
                if spec.erase is TableErase.mask and col.erase is ColumnErase.keep
            }
            report["kept_columns"] += [
                {"table": tname, "column": c, "exception": spec.columns[c].exception.value}
                for c in sorted(kept)
                if spec.columns[c].exception is not None
            ]
            joined = _join(md, system, tname)
            columns = [c for c in joined.base.columns if _text_like(c) and c.name not in kept]
            report["tables"] += 1
            report["columns"] += len(columns)
            unheld = _not_held(joined, kept_of.get(tname, set()))
            table = _Table(sname, tname, spec, joined, columns, unheld)
            if columns and every:
                _search_table(conn, table, by_tenant, consumers, verdict, shared)
            checked = {t: ks - exempt.get(tname, set()) for t, ks in consumers.items()}
            _key_check(conn, table, checked, verdict)
        _short_contact_ids(conn, md, sname, system, values, verdict, kept_of)
    shared.settle(verdict, sname)


@dataclass
class _Shared:
    """Hits of found values on another consumer's rows, judged once every table is searched:
    shared when an identity column showed each value is that consumer's own (`owners`), so the
    verdict does not depend on the order tables, rows or columns are read in."""

    owners: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    pending: list[tuple[str, str, str, list[str]]] = field(default_factory=list)

    def settle(self, verdict: Verdict, sname: str) -> None:
        for where, tenant, consumer, texts in self.pending:
            if all(consumer in self.owners.get((tenant, text), ()) for text in texts):
                verdict.sql[sname]["shared_identity"] += 1
            else:
                verdict.residue[where] += 1
        self.pending.clear()


def _not_held(joined: _Joined, consumers: set[str]) -> sa.ColumnElement:
    """Rows not kept under a legal hold (R19): not owned by one of the held consumers. Never
    NULL (an orphan, whose consumer cannot be told, is searched)."""
    typed = typed_values(joined.consumer, sorted(consumers))
    if not typed:
        return sa.true()
    return sa.or_(joined.consumer.is_(None), joined.consumer.not_in(typed))


@dataclass(frozen=True)
class _Table:
    """One mapped table as the search sees it: its joins toward consumer and tenant, the text
    columns searched (kept ones left out) and the filter that skips rows under a hold."""

    system: str
    name: str
    spec: Any
    joined: _Joined
    columns: list[sa.Column]
    unheld: sa.ColumnElement


def _search_table(conn, table: _Table, by_tenant, consumers, verdict, shared: _Shared) -> None:
    """Rows of each tenant holding one of its values; then rows whose tenant cannot be told
    (an orphan whose parent is gone), against every tenant's values.

    Shared, not residue: a value the request did not give, found on a row of a consumer outside
    the batch who holds it as their own identity: in a mapped identity column (recorded in
    `owners`), or in any column of that consumer's rows once an identity column showed it is
    theirs (their messages to their own address: the same e-mail on two contacts)."""
    sname, tname, spec, joined, columns = (
        table.system, table.name, table.spec, table.joined, table.columns
    )  # fmt: skip
    low = _haystack(columns)
    digits = _digits(low)
    identity_cols = {c for c, col in spec.columns.items() if col.identity is not None}
    passes = [
        (tenant, _tenant_filter(joined, tenant), vs) for tenant, vs in sorted(by_tenant.items())
    ]
    if (joined.tenant.table is not joined.base or joined.tenant.nullable) and _has_orphans(
        conn, table
    ):
        passes.append((None, joined.tenant.is_(None), [v for vs in by_tenant.values() for v in vs]))
    for tenant, where, values in passes:
        erased = consumers.get(tenant, set()) if tenant is not None else set()
        for i in range(0, len(values), SQL_TERMS):
            chunk = values[i : i + SQL_TERMS]
            stmt = (
                sa.select(joined.consumer, *columns)
                .select_from(joined.from_clause)
                .where(where)
                .where(table.unheld)
                .where(sa.or_(*(_term(v, low, digits) for v in chunk)))
            )
            for row in conn.execute(stmt):
                consumer, cells = row[0], row[1:]
                for col, cell in zip(columns, cells, strict=True):
                    hits = [v for v in chunk if _found_in(v, cell)]
                    if not hits:
                        continue
                    other = (  # a consumer outside the batch, a value we only found (module doc)
                        tenant is not None
                        and consumer is not None
                        and str(consumer) not in erased
                        and not any(v.given for v in hits)
                    )
                    place = f"{sname}:{tname}.{col.name}"
                    if not other:
                        verdict.residue[place] += 1
                    elif col.name in identity_cols:
                        for v in hits:
                            shared.owners[(str(tenant), v.text)].add(str(consumer))
                        verdict.sql[sname]["shared_identity"] += 1
                    else:  # theirs only if an identity column anywhere says so: settled later
                        texts = [v.text for v in hits]
                        shared.pending.append((place, str(tenant), str(consumer), texts))


def _has_orphans(conn, table: _Table) -> bool:
    """Whether any unheld row's tenant cannot be told. Usually none: asked once, because the
    orphan pass tests every tenant's values (at 1M contacts and a batch of 1,000, 67 scans
    of a joined table that found nothing, over ten minutes per table)."""
    joined = table.joined
    probe = (
        sa.select(sa.literal(1))
        .select_from(joined.from_clause)
        .where(joined.tenant.is_(None))
        .where(table.unheld)
        .limit(1)
    )
    return conn.execute(probe).first() is not None


def _key_check(conn, table: _Table, consumers, verdict) -> None:
    """Rows still referencing an erased consumer where the map says they are erased."""
    sname, tname, spec, joined = table.system, table.name, table.spec, table.joined
    if spec.erase is TableErase.mask:
        if joined.depth != 1:
            return  # the kept row references the consumer through a parent: kept by the map
        rel = spec.relation
        col = spec.columns.get(rel.column) if rel else None
        if col is None or col.erase is ColumnErase.keep:
            return  # the reference itself is kept (R19)
    keys = sorted({k for ks in consumers.values() for k in ks})
    if not keys or joined.depth > 1:
        return  # deeper rows are reached through their parents (searched above when orphaned)
    typed = typed_values(joined.consumer, keys)
    for i in range(0, len(typed), 1000):
        stmt = (
            sa.select(sa.func.count())
            .select_from(joined.from_clause)
            .where(joined.consumer.in_(typed[i : i + 1000]))
        )
        n = int(conn.execute(stmt).scalar() or 0)
        if n:
            verdict.residue[f"{sname}:{tname}.{joined.consumer.name}"] += n


def _short_contact_ids(conn, md, sname, system, values, verdict, kept_of=None) -> None:
    """Contact ids too short to search as text: no mapped contact_id column may still equal
    one in its tenant (erase: keep tables and kept columns excepted)."""
    short = [v for v in values if v.kind is IdentityType.contact_id and not v.spellings]
    if not short:
        return
    for tname, spec in sorted(system.tables.items()):
        if spec.erase is TableErase.keep:
            continue
        joined = _join(md, system, tname)
        for cname, col in spec.columns.items():
            if col.identity is not IdentityType.contact_id or col.erase is ColumnErase.keep:
                continue
            column = joined.base.c[cname]
            for value in short:
                try:
                    typed = typed_value(column, value.text)
                except KeyTypeError:
                    continue
                stmt = (
                    sa.select(sa.func.count())
                    .select_from(joined.from_clause)
                    .where(_tenant_filter(joined, value.tenant))
                    .where(_not_held(joined, (kept_of or {}).get(tname, set())))
                    .where(column == typed)
                )
                n = int(conn.execute(stmt).scalar() or 0)
                if n:
                    verdict.residue[f"{sname}:{tname}.{cname}"] += n
