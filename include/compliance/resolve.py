"""From request identities to consumer rows, within each request's tenant only.

Shared by deletion and access (one implementation). A person may have several consumer rows and
several identities: every row matching any given identity *in the client's tenant* is in scope,
and the identities found on those rows (aliases, other phones, our record ids) are added so that
logs mentioning the person under another identity are found too. Expansion is one step on
purpose: following identities transitively could sweep in a relative who shares a phone.

Cost: one statement per identity column per chunk of (tenant, value) pairs, however many requests.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.datamap.model import IdentityType, SqlSystem
from compliance.sqlmap import MappedSql

CHUNK = 500


@dataclass(frozen=True)
class Subject:
    """What one request asks about: `ref` is an opaque request reference."""

    ref: str
    client_id: int
    identities: tuple[tuple[IdentityType, str], ...]


@dataclass
class Resolution:
    ref: str
    client_id: int
    consumer_ids: set[int | str] = field(default_factory=set)
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
    out = {s.ref: Resolution(s.ref, s.client_id) for s in subjects}
    for s in subjects:
        for kind, value in s.identities:
            out[s.ref].identities[kind].add(value)
    # (tenant, kind, value) -> refs asking for it
    wanted: dict[tuple[str, IdentityType, str], set[str]] = defaultdict(set)
    for s in subjects:
        for kind, value in s.identities:
            wanted[
                (str(s.client_id), kind, value.lower() if kind is IdentityType.email else value)
            ].add(s.ref)
    consumer_refs: dict[tuple[str, str], set[str]] = defaultdict(set)  # (tenant, consumer) -> refs
    with engine.connect() as conn:
        for tname, cname, kind in identity_columns(system):
            pairs = sorted({(t, v) for (t, k, v) in wanted if k is kind})
            if not pairs:
                continue
            owned = sql.owned(tname)
            value_expr = normalise_for_column(kind, owned.table.c[cname])
            tenant_expr = sa.cast(owned.tenant, sa.String)
            for i in range(0, len(pairs), CHUNK):
                stmt = (
                    sa.select(tenant_expr, value_expr, owned.consumer_key)
                    .select_from(owned.from_clause)
                    .where(sa.tuple_(tenant_expr, value_expr).in_(pairs[i : i + CHUNK]))
                )
                for tenant, value, consumer in conn.execute(stmt):
                    for ref in wanted[(str(tenant), kind, value)]:
                        out[ref].consumer_ids.add(consumer)
                        consumer_refs[(str(tenant), str(consumer))].add(ref)
        _expand(conn, sql, system, out)
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
    ids = sorted({cid for res in out.values() for cid in res.consumer_ids}, key=str)
    for tname, cname, kind in identity_columns(system):
        owned = sql.owned(tname)
        col = owned.table.c[cname]
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
                for ref in by_consumer[str(consumer)]:
                    out[ref].identities[kind].add(norm)
