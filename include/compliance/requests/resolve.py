"""From request identities to consumer rows, within each request's tenant only.

Shared by deletion and access (one implementation). A person may have several consumer rows and
several identities: every row matching any given identity *in the client's tenant* is in scope,
and the identities found on those rows (aliases, other phones, our record ids) are added so that
logs mentioning the person under another identity are found too. Expansion is one step on
purpose: following identities transitively could sweep in a relative who shares a phone.

Cost: one statement per identity column per chunk of (tenant, value) pairs, however many requests.

Tenant ids and consumer keys travel as text (`sqlmap.key_text`) and are compared in the CRM
column's own type (`sqlmap.typed_value`), never by casting the column: the CRM's indexes on
(tenant, identity) serve, and "01" never matches an integer tenant 1 (any-CRM, issue 14).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap.model import IdentityType, SqlSystem
from compliance.core.sqlmap import (
    KeyTypeError,
    MappedSql,
    integer_text,
    key_text,
    typed_value,
    typed_values,
)

CHUNK = 500


@dataclass(frozen=True)
class Subject:
    """What one request asks about: `ref` is an opaque request reference."""

    ref: str
    client_id: str  # the tenant id as text, as the state DB keeps it
    identities: tuple[tuple[IdentityType, str], ...]


@dataclass
class Resolution:
    ref: str
    client_id: str
    consumer_ids: set[str] = field(default_factory=set)  # consumer keys as text (key_text)
    identities: dict[IdentityType, set[str]] = field(default_factory=lambda: defaultdict(set))

    @property
    def found(self) -> bool:
        return bool(self.consumer_ids)


def identity_columns(system: SqlSystem) -> list[tuple[str, str, IdentityType]]:
    return [
        (tname, cname, col.identity)
        for tname, table in system.tables.items()
        for cname, col in table.columns.items()
        if col.identity is not None
    ]


def normalise_for_column(kind: IdentityType, expr: sa.ColumnElement) -> sa.ColumnElement:
    """E-mails compare case-insensitively; the rest as stored (phones are E.164 in the CRM)."""
    return sa.func.lower(expr) if kind is IdentityType.email else expr


def resolve(
    engine: Engine, system: SqlSystem, subjects: Iterable[Subject]
) -> dict[str, Resolution]:
    subjects = list(subjects)
    sql = MappedSql(engine, system)
    out = {s.ref: Resolution(s.ref, key_text(s.client_id)) for s in subjects}
    for s in subjects:
        for kind, value in s.identities:
            out[s.ref].identities[kind].add(value)
    # (tenant text, kind, value) -> refs asking for it
    wanted: dict[tuple[str, IdentityType, str], set[str]] = defaultdict(set)
    for s in subjects:
        for kind, value in s.identities:
            wanted[
                (
                    key_text(s.client_id),
                    kind,
                    value.lower() if kind is IdentityType.email else value,
                )
            ].add(s.ref)
    with engine.connect() as conn:
        for tname, cname, kind in identity_columns(system):
            owned = sql.owned(tname)
            column = owned.table.c[cname]
            asked: dict[tuple[str, str], set[str]] = defaultdict(set)  # (tenant, value) -> refs
            typed_of: dict[str, object] = {}
            for (t, k, v), refs in wanted.items():
                if k is kind and (typed := _typed_identity(column, v)) is not None:
                    asked[(t, key_text(typed))] |= refs
                    typed_of[key_text(typed)] = typed
            pairs = sorted(
                (tt, tv, typed_of[v]) for tt, tv, v in _typed_pairs(owned.tenant, set(asked))
            )  # fmt: skip
            if not pairs:
                continue
            value_expr = normalise_for_column(kind, column)
            for i in range(0, len(pairs), CHUNK):
                by_tenant: dict[object, list[object]] = defaultdict(list)
                for _, typed, value in pairs[i : i + CHUNK]:
                    by_tenant[typed].append(value)
                # Per tenant `tenant = t AND value IN (...)`, OR-ed (issue 19): SQLite never
                # probes an index with a multi-row `(a, b) IN (VALUES ...)` (a compound
                # subquery); PostgreSQL plans the OR as a BitmapOr over the same index.
                match = sa.or_(
                    *(sa.and_(owned.tenant == t, value_expr.in_(vs)) for t, vs in by_tenant.items())
                )
                stmt = (
                    sa.select(owned.tenant, value_expr, owned.consumer_key)
                    .select_from(owned.from_clause)
                    .where(match)
                )
                for tenant, value, consumer in conn.execute(stmt):
                    for ref in asked.get((key_text(tenant), key_text(value)), ()):
                        out[ref].consumer_ids.add(key_text(consumer))
        _expand(conn, sql, system, out)
    return out


def _typed_identity(column: sa.Column, value: str) -> object | None:
    """A given identity in its column's type, or None when the column cannot hold it. Compared
    in that type, the CRM's own index serves, and a hit read back is keyed by its `key_text`:
    an INTEGER or UUID identity column is found (its values come back as int or UUID, never
    as the text the request gave). An integer column compares numbers: "0123" is 123 (an
    identity is a number the consumer wrote down; tenants, unlike it, are exact, R6)."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = str
    if python_type is int:
        number = integer_text(value)
        return int(number) if number is not None and len(number) <= 20 else None
    try:
        return typed_value(column, value)
    except KeyTypeError:
        return None


def _typed_pairs(
    tenant: sa.ColumnElement, pairs: set[tuple[str, str]]
) -> list[tuple[str, object, str]]:
    """(tenant text, tenant in the column's type, value); a tenant the column cannot hold (a
    text id against an integer column, or "01") matches no row and is left out."""
    out = []
    for text, value in pairs:
        try:
            out.append((text, typed_value(tenant, text), value))
        except KeyTypeError:
            continue
    return out


def _expand(
    conn: sa.Connection, sql: MappedSql, system: SqlSystem, out: dict[str, Resolution]
) -> None:
    """Add every identity held on the resolved consumers' rows (one step, same tenant)."""
    by_consumer: dict[str, set[str]] = defaultdict(set)
    for res in out.values():
        for cid in res.consumer_ids:
            by_consumer[str(cid)].add(res.ref)
            res.identities[IdentityType.record_id].add(str(cid))
    if not by_consumer:
        return
    texts = sorted({cid for res in out.values() for cid in res.consumer_ids})
    for tname, cname, kind in identity_columns(system):
        owned = sql.owned(tname)
        col = owned.table.c[cname]
        ids = typed_values(owned.consumer_key, texts)
        for i in range(0, len(ids), CHUNK):
            stmt = (
                sa.select(owned.consumer_key, col)
                .select_from(owned.from_clause)
                .where(owned.consumer_key.in_(ids[i : i + CHUNK]), col.is_not(None))
            )
            for consumer, value in conn.execute(stmt):
                norm = (
                    str(value).strip().lower() if kind is IdentityType.email else str(value).strip()
                )
                for ref in by_consumer[key_text(consumer)]:
                    out[ref].identities[kind].add(norm)
