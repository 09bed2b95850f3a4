"""From request identities to consumer rows, within each request's tenant only.

Shared by deletion and access (one implementation). A person may have several consumer rows and
several identities: every row matching any given identity *in the client's tenant* is in scope,
and the identities found on those rows (aliases, other phones, our record ids) are added so that
logs mentioning the person under another identity are found too. Expansion is one step on
purpose: following identities transitively could sweep in a relative who shares a phone; and a
found value another consumer of the tenant holds too is not added but kept in `shared`
(`_expand`, docs/deletion.md "Shared identities").

Cost: one statement per identity column per chunk of (tenant, value) pairs, however many requests.

Tenant ids and consumer keys travel as text (`sqlmap.key_text`) and are compared in the CRM
column's own type (`sqlmap.typed_value`), never by casting the column: the CRM's indexes on
(tenant, identity) serve, and "01" never matches an integer tenant 1 (any-CRM, issue 14).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
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
from compliance.requests.identities import stored_phone_forms

CHUNK = 500
Held = tuple[str, IdentityType, str]  # (tenant as text, kind, value as compared)


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
    # Identities found on the consumers' rows that consumers outside the request hold too
    # (`_expand`), with every holder's key; not in `identities` unless `admit`ted.
    shared: dict[tuple[IdentityType, str], set[str]] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(self.consumer_ids)

    def admit(self, erased: set[str]) -> int:
        """Deletion's wider rule: a shared value all of whose holders are erased in the same
        batch is erased by too (a household both of whose members asked); the rest stay out.
        Returns how many stay out. Access never admits: another requester's lines are theirs."""
        for (kind, value), holders in list(self.shared.items()):
            if holders <= erased:
                self.identities[kind].add(value)
                del self.shared[(kind, value)]
        return len(self.shared)


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
    wanted: dict[Held, set[str]] = defaultdict(set)  # (tenant, kind, value) -> refs asking
    for s in subjects:
        for kind, value in s.identities:
            out[s.ref].identities[kind].add(value)
            wanted[(key_text(s.client_id), kind, normal_identity(kind, value))].add(s.ref)
    with engine.connect() as conn:
        for held, consumer in _holders(conn, sql, system, set(wanted)):
            for ref in wanted[held]:
                out[ref].consumer_ids.add(consumer)
        _expand(conn, sql, system, out)
    return out


def normal_identity(kind: IdentityType, value: object) -> str:
    """An identity as lookups compare it: e-mails case-insensitively, the rest as stored."""
    text = str(value).strip()
    return text.lower() if kind is IdentityType.email else text


def holders(engine: Engine, system: SqlSystem, wanted: set[Held]) -> dict[Held, set[str]]:
    """Every consumer (key as text) holding each wanted (tenant, kind, value) in a mapped
    identity column of that tenant; values as `normal_identity` spells them. For values not
    found now, such as a partial request's remembered ones (`deletion.plan`)."""
    wanted = {(t, k, normal_identity(k, v)) for t, k, v in wanted}
    if not wanted:
        return defaultdict(set)
    with engine.connect() as conn:
        return _holders_by_number(conn, MappedSql(engine, system), system, wanted)


def _holders_by_number(
    conn: sa.Connection, sql: MappedSql, system: SqlSystem, wanted: set[Held]
) -> dict[Held, set[str]]:
    """`_holders` of values found on rows, a phone under every spelling a CRM stores one in:
    the same number written "+14155550123" on one row and "415-555-0123" on another has two
    holders (given phones arrive with their spellings from intake already)."""
    lookups: dict[Held, set[Held]] = defaultdict(set)  # a spelling looked up -> found values
    for held in wanted:
        tenant, kind, value = held
        forms = stored_phone_forms(value) if kind is IdentityType.phone else (value,)
        for form in forms:
            lookups[(tenant, kind, form)].add(held)
    out: dict[Held, set[str]] = defaultdict(set)
    for looked_up, consumer in _holders(conn, sql, system, set(lookups)):
        for held in lookups[looked_up]:
            out[held].add(consumer)
    return out


def _holders(
    conn: sa.Connection, sql: MappedSql, system: SqlSystem, wanted: set[Held]
) -> Iterator[tuple[Held, str]]:
    """Every consumer holding a wanted (tenant, kind, value) in a mapped identity column of
    that tenant: (what was asked, the consumer's key as text), once per column that holds it.

    Cost: one statement per identity column per chunk of (tenant, value) pairs."""
    for tname, cname, kind in identity_columns(system):
        owned = sql.owned(tname)
        column = owned.table.c[cname]
        # (tenant, value as the column reads it back) -> what was asked ("0123" and "123" are
        # one integer)
        asked: dict[tuple[str, str], set[Held]] = defaultdict(set)
        typed_of: dict[str, object] = {}
        for t, k, v in wanted:
            if k is kind and (typed := _typed_identity(column, v)) is not None:
                asked[(t, key_text(typed))].add((t, k, v))
                typed_of[key_text(typed)] = typed
        pairs = sorted(
            (tt, tv, typed_of[v]) for tt, tv, v in _typed_pairs(owned.tenant, set(asked))
        )  # fmt: skip
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
                .distinct()
            )
            for tenant, value, consumer in conn.execute(stmt):
                for held in asked.get((key_text(tenant), key_text(value)), ()):
                    yield held, key_text(consumer)


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
    """Add the identities held on the resolved consumers' rows (one step, same tenant) that
    no consumer outside the request holds too; those go to `shared` with every holder.

    Why: a value someone else also holds is not this person's to look up or erase by. A lead
    who typed the shop's own number as their phone would otherwise pull every inbound SMS of
    the shop into their access bundle and out of the logs on erasure (issue 19: 524 messages
    of other consumers at 200,000 contacts). A given value is never shared: the client's staff
    verified it (R5)."""
    by_consumer: dict[str, set[str]] = defaultdict(set)
    for res in out.values():
        for cid in res.consumer_ids:
            by_consumer[cid].add(res.ref)
            res.identities[IdentityType.record_id].add(cid)
    if not by_consumer:
        return
    found: dict[Held, set[str]] = defaultdict(set)  # (tenant, kind, value) -> refs
    texts = sorted(by_consumer)
    for tname, cname, kind in identity_columns(system):
        owned = sql.owned(tname)
        col = owned.table.c[cname]
        ids = typed_values(owned.consumer_key, texts)
        for i in range(0, len(ids), CHUNK):
            stmt = (
                sa.select(owned.consumer_key, owned.tenant, col)
                .select_from(owned.from_clause)
                .where(owned.consumer_key.in_(ids[i : i + CHUNK]), col.is_not(None))
            )
            for consumer, tenant, value in conn.execute(stmt):
                held = (key_text(tenant), kind, normal_identity(kind, value))
                found[held] |= by_consumer[key_text(consumer)]
    holders = _holders_by_number(conn, sql, system, set(found))
    for held, refs in found.items():
        _, kind, value = held
        for ref in refs:
            res = out[ref]
            if value in res.identities.get(kind, ()):
                continue  # given
            others = holders[held] - res.consumer_ids
            if others:
                res.shared[(kind, value)] = holders[held]
            else:
                res.identities[kind].add(value)
