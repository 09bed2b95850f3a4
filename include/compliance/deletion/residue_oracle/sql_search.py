"""The residue oracle in SQL: every text-like column of every mapped table, mapped or not, searched
with LIKE within the request's tenant; erased tables checked for the consumers' keys (R16.1).

Kept is not residue (R18, R19): `erase: keep` tables and columns and rows a legal hold keeps are
not searched; see the package's docstring for the shared-identity exception.

One statement per table for the whole batch (issue 19): the batch's search terms go to a
temporary table (tenant, pattern), and the table's rows of the batch's tenants are matched against
their own tenant's terms with EXISTS, so PostgreSQL reads the table once with a hash semi-join
(one statement per tenant and chunk of values took finalize 13 minutes at 1M contacts); a large
table in block ranges side by side (`sql_parts`). The database only proposes candidate rows;
Python then tells which values a cell really holds (`_found_in`).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
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
from compliance.deletion.residue_oracle.sql_parts import block_ranges, side_by_side
from compliance.deletion.residue_oracle.values import Value, Verdict, bounded, phone_digits

_Needles = tuple[tuple[bytes, ...], tuple[bytes, ...]]  # a value's spellings, its phone digits

PHONE_STRIP = " -().+"  # removed from a column's text before its digits are compared
_STRIP = {ord(c): None for c in PHONE_STRIP}
ESCAPE = "/"  # the LIKE escape of the terms' patterns
TEXT, DIGITS = 0, 1  # a term's kind: compared to the lower-cased text, or to its digits


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


def _needles(value: Value) -> _Needles:
    """What `_found_in` looks for, computed once per search (phone spellings are slow to make)."""
    digits = phone_digits(value.text) if value.kind is IdentityType.phone else set()
    return tuple(s.encode() for s in value.spellings), tuple(d.encode() for d in digits)


def _cell_text(cell: Any) -> tuple[bytes, bytes]:
    """A cell as `_found_in` searches it: lower-cased, and without PHONE_STRIP's characters."""
    text = cell if isinstance(cell, str) else json.dumps(cell, default=str, ensure_ascii=False)
    text = text.lower()
    return text.encode(), text.translate(_STRIP).encode()


def _found_in(needles: _Needles, raw: bytes, stripped: bytes) -> bool:
    """The Python side of a SQL candidate: the value really is in this cell, bounded."""
    spellings, digits = needles
    if any(next(bounded(raw, s), None) is not None for s in spellings):
        return True
    return any(next(bounded(stripped, d), None) is not None for d in digits)


def _pattern(text: str) -> str:
    """`LIKE '%text%' ESCAPE '/'`: the text's own `/`, `%` and `_` stand for themselves."""
    for ch in (ESCAPE, "%", "_"):
        text = text.replace(ch, ESCAPE + ch)
    return f"%{text}%"


def _terms(value: Value) -> set[tuple[int, str]]:
    """The value's LIKE terms: a phone on the column's digits (its shortest digit form, which
    every spelling holds), anything else each spelling on the lower-cased text."""
    if value.kind is IdentityType.phone:
        forms = phone_digits(value.text)
        if forms:
            return {(DIGITS, _pattern(min(forms, key=len)))}
    return {(TEXT, _pattern(s)) for s in value.spellings}


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
    shared when an identity column showed each value is the own identity of a consumer outside
    the batch (`owners`), that row's consumer or another of the tenant, so the verdict does not
    depend on the order tables, rows or columns are read in.

    Another owner is enough: a value two people outside the batch hold (a household phone, or
    the client's own shop number a lead typed in) is theirs wherever else it appears in the
    tenant (their family's messages, every inbound SMS to the shop), and erasing it there would
    erase other people's data. At 200,000 contacts a batch of 1,000 stayed open on 524 inbound
    messages to a dealer's number that two consumers outside it also held (issue 19)."""

    owners: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    pending: list[tuple[str, str, list[str]]] = field(default_factory=list)  # where, tenant

    def settle(self, verdict: Verdict, sname: str) -> None:
        for where, tenant, texts in self.pending:
            if all(self.owners.get((tenant, text)) for text in texts):
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
    """Rows of each tenant holding one of its values, in one statement for every tenant of the
    batch; then rows whose tenant cannot be told (an orphan whose parent is gone), against every
    tenant's values (module doc, R16.1, issue 19).

    Shared, not residue: a value the request did not give, found on a row of a consumer outside
    the batch, when a consumer outside the batch holds it as their own identity in a mapped
    identity column (`owners`; `_Shared`): the row's consumer or another of the tenant."""
    sname, tname, spec, joined, columns = (
        table.system, table.name, table.spec, table.joined, table.columns
    )  # fmt: skip
    identity_cols = {c for c, col in spec.columns.items() if col.identity is not None}
    tenants = sorted(by_tenant)
    every = [v for t in tenants for v in by_tenant[t]]
    needles = {id(v): _needles(v) for v in every}
    orphans = (joined.tenant.table is not joined.base or joined.tenant.nullable) and _has_orphans(
        conn, table
    )

    def search(conn: sa.Connection, part: sa.ColumnElement | None) -> list[Any]:
        with _terms_table(conn, joined, tenants, by_tenant) as terms:
            passes = [_statement(table, terms, False, part)]
            if orphans:
                passes.append(_statement(table, terms, True, part))
            return [row for stmt in passes for row in conn.execute(stmt)]

    rows = side_by_side(conn, block_ranges(conn, joined.base), search)
    for ti, consumer, *cells in rows:
        tenant = None if ti is None else tenants[ti]  # None: an orphan
        values = every if tenant is None else by_tenant[tenant]
        erased = consumers.get(tenant, set()) if tenant is not None else set()
        for col, cell in zip(columns, cells, strict=True):
            if cell is None:
                continue
            raw, stripped = _cell_text(cell)
            hits = [v for v in values if _found_in(needles[id(v)], raw, stripped)]
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
                shared.pending.append((place, str(tenant), texts))


@contextlib.contextmanager
def _terms_table(conn, joined: _Joined, tenants: list[str], by_tenant) -> Iterator[sa.Table]:
    """A temporary table of the batch's terms: `tenant` (made by CREATE TABLE AS from the tenant
    column itself: the CRM's type, length, collation and equality, "01" never 1), `ti` (the
    tenant's index in `tenants`: an upper- and a lower-case UUID type to one value), `kind`
    (TEXT or DIGITS), `pat` (LIKE, ESCAPE '/'). One executemany (an IN list or VALUES meets bind
    limits; SQLite rejects `VALUES ... AS name (cols)`). A tenant the column cannot hold gets
    NULL: it owns no row, but orphans are searched for its values. Dropped afterwards."""
    name = f"oracle_terms_{uuid.uuid4().hex[:16]}"
    create = (
        sa.select(
            joined.tenant.label("tenant"),
            sa.cast(sa.null(), sa.Integer).label("ti"),
            sa.cast(sa.null(), sa.Integer).label("kind"),
            sa.cast(sa.null(), sa.Text).label("pat"),
        )
        .select_from(joined.tenant.table)
        .where(sa.false())
        .into(name, temporary=True)
    )
    rows: list[dict[str, Any]] = []
    for ti, tenant in enumerate(tenants):
        try:
            typed = typed_value(joined.tenant, tenant)
        except KeyTypeError:
            typed = None
        terms = {t for v in by_tenant[tenant] for t in _terms(v)}
        rows += [{"tenant": typed, "ti": ti, "kind": k, "pat": p} for k, p in sorted(terms)]
    conn.execute(create)
    terms_table = create.table
    try:
        if rows:
            conn.execute(terms_table.insert(), rows)
        sa.Index(f"{name}_ti", terms_table.c.ti).create(conn)  # SQLite's EXISTS: a search
        if conn.dialect.name == "postgresql":  # temporary tables are never analysed by autovacuum
            conn.execute(sa.text(f"ANALYZE {name}"))
        yield terms_table
    except BaseException:
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # PostgreSQL rolls it back anyway
            _drop(conn, terms_table)
        raise
    _drop(conn, terms_table)


def _drop(conn, terms: sa.Table) -> None:
    """Drop the terms and commit: SQLite creates a table outside the transaction, so a drop
    rolled back would leave it on the pooled connection (and the read locks held)."""
    terms.drop(conn)
    conn.commit()


def _statement(
    table: _Table, terms: sa.Table, orphans: bool, part: sa.ColumnElement | None = None
) -> sa.Select:
    """(ti, consumer, *text columns) of the rows holding a term of their own tenant, once per
    row and request tenant; with `orphans`, (NULL, ...) of rows without a tenant holding any term.

    The inner selects compute the haystack once per row, its digits from it (PostgreSQL does not
    share the lower-cased text between two expressions: 25% of the statement at 4M rows):
    OFFSET 0 keeps PostgreSQL and SQLite from flattening them into the EXISTS (once per row and
    term). The tenant condition keeps a batch of one tenant on the tenant index instead of a
    scan of every tenant's rows; IN (SELECT ...) plans as well as a list of the tenants (a hash
    semi-join or an index scan) and meets no bind-parameter limit."""
    joined = table.joined
    own = terms.c.tenant.is_not(None)
    where = (
        joined.tenant.is_(None)
        if orphans
        else joined.tenant.in_(sa.select(terms.c.tenant).where(own))
    )
    rows = (
        sa.select(
            joined.consumer.label("consumer"),
            joined.tenant.label("tenant"),
            *(c.label(f"c{i}") for i, c in enumerate(table.columns)),
            _haystack(table.columns).label("low"),
        )
        .select_from(joined.from_clause)
        .where(where, table.unheld, *([part] if part is not None else []))
        .offset(0)
        .subquery("h0")
    )
    h = sa.select(rows, _digits(rows.c.low).label("digits")).offset(0).subquery("h")
    t = terms.alias("t")
    match = sa.or_(
        sa.and_(t.c.kind == TEXT, h.c.low.like(t.c.pat, escape=ESCAPE)),
        sa.and_(t.c.kind == DIGITS, h.c.digits.like(t.c.pat, escape=ESCAPE)),
    )
    cells = [h.c[f"c{i}"] for i in range(len(table.columns))]
    if orphans:
        return sa.select(sa.null(), h.c.consumer, *cells).where(sa.exists().where(match))
    mine = sa.select(terms.c.tenant, terms.c.ti).where(own).distinct().subquery("bt")
    return (
        sa.select(mine.c.ti, h.c.consumer, *cells)
        .select_from(h.join(mine, mine.c.tenant == h.c.tenant))
        .where(sa.exists().where(t.c.ti == mine.c.ti, match))
    )


def _has_orphans(conn, table: _Table) -> bool:
    """Whether any unheld row's tenant cannot be told. Usually none: asked once, because the
    orphan pass tests every tenant's values (at 1M contacts, over ten minutes per table)."""
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
