"""Erasing consumers from a SQL system, driven by the data map (R16.1, R19).

Two steps so that a crash and a rerun converge on the same receipt: `plan_erasure` counts, per
table and per consumer, what will be touched (stored before anything changes); `execute_erasure`
then applies each table's strategy, children before parents, one set-based statement per table and
chunk of consumers. Executing twice is harmless: erased rows are no longer owned by the consumer,
and hashed values are recognised and not hashed again.

Consumer keys arrive as text (the targets files keep them so) and are compared in the key
column's own type (`sqlmap.typed_values`), never by casting the column, so the CRM's indexes
serve (any-CRM: integer, text and UUID keys). A composite primary key is matched as a row value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance import faults
from compliance.datamap.graph import erase_order
from compliance.datamap.model import ColumnErase, SqlSystem, TableErase
from compliance.hashing import keyed_hash
from compliance.sqlmap import MappedSql, key_text, typed_values

CHUNK = 1000
HASH_PREFIX = "cjh_"
PLACEHOLDER = "[deleted]"


@dataclass
class TablePlan:
    table: str
    action: TableErase
    per_consumer: dict[str, int] = field(default_factory=dict)
    exception: str | None = None
    kept_columns: dict[str, str] = field(default_factory=dict)  # column -> R19 exception code

    @property
    def rows(self) -> int:
        return sum(self.per_consumer.values())


def plan_erasure(
    engine: Engine, system: SqlSystem, consumer_ids: Iterable[object]
) -> list[TablePlan]:
    ids = _texts(consumer_ids)
    sql = MappedSql(engine, system)
    plans = []
    with engine.connect() as conn:
        for tname in erase_order(system):
            spec = system.tables[tname]
            plan = TablePlan(tname, spec.erase, exception=spec.exception and spec.exception.value)
            plan.kept_columns = {
                c: col.exception.value
                for c, col in spec.columns.items()
                if spec.erase is TableErase.mask and col.erase is ColumnErase.keep and col.exception
            }
            owned = sql.owned(tname)
            for chunk in _chunks(typed_values(owned.consumer_key, ids)):
                stmt = (
                    sa.select(owned.consumer_key, sa.func.count())
                    .select_from(owned.from_clause)
                    .where(owned.consumer_key.in_(chunk))
                    .group_by(owned.consumer_key)
                )
                for consumer, n in conn.execute(stmt):
                    plan.per_consumer[key_text(consumer)] = int(n)
            plans.append(plan)
    return plans


def execute_erasure(
    engine: Engine, system: SqlSystem, consumer_ids: Iterable[object], hash_key: bytes
) -> dict[str, int]:
    """Apply every table's strategy to the consumers' rows; returns rows affected per table."""
    ids = _texts(consumer_ids)
    sql = MappedSql(engine, system)
    affected: dict[str, int] = defaultdict(int)
    for tname in erase_order(system):
        spec = system.tables[tname]
        if spec.erase is TableErase.keep:
            continue
        owned = sql.owned(tname)
        keys = sql.key_columns(tname)
        pk = sql.primary_key(tname)  # the column, or the row value of a composite key
        for chunk in _chunks(typed_values(owned.consumer_key, ids)):
            # One short transaction per table and chunk: locks are held briefly, and a crash
            # leaves whole chunks done or not done, which a rerun completes.
            with engine.begin() as conn:
                row_ids = (
                    sa.select(*keys)
                    .select_from(owned.from_clause)
                    .where(owned.consumer_key.in_(chunk))
                )
                if spec.erase is TableErase.delete:
                    result = conn.execute(sa.delete(owned.table).where(pk.in_(row_ids)))
                    affected[tname] += result.rowcount or 0
                else:
                    affected[tname] += _mask(conn, owned.table, keys, spec, row_ids, hash_key)
                faults.checkpoint("erase_sql.in_chunk", table=tname, conn=conn)
            faults.checkpoint("erase_sql.after_chunk", table=tname)
    return {table: n for table, n in affected.items() if n}


def _mask(
    conn: sa.Connection, table: sa.Table, keys: list[sa.Column], spec, row_ids, hash_key: bytes
) -> int:
    """Erase the masked columns of the rows `row_ids` selects (their key columns, in order)."""
    plain: dict[str, object] = {}
    hashed: list[str] = []
    for cname, col in spec.columns.items():
        if col.erase is ColumnErase.nullify:
            plain[cname] = None
        elif col.erase is ColumnErase.deidentify:
            plain[cname] = PLACEHOLDER
        elif col.erase is ColumnErase.hash:
            hashed.append(cname)
    n_keys = len(keys)
    pk = keys[0] if n_keys == 1 else sa.tuple_(*keys)
    ids = [r[0] if n_keys == 1 else tuple(r) for r in conn.execute(row_ids)]
    if not ids:
        return 0
    if hashed:
        # Deterministic keyed hashes (not random strings) so reruns converge (peers, idea 6).
        rows = conn.execute(
            sa.select(*keys, *[table.c[c] for c in hashed]).where(pk.in_(ids))
        ).all()
        params = []
        for row in rows:
            values = {}
            for cname, value in zip(hashed, row[n_keys:], strict=True):
                if value is None or str(value).startswith(HASH_PREFIX):
                    values[f"h_{cname}"] = value
                else:
                    digest = keyed_hash(hash_key, f"{table.name}.{cname}", str(value))
                    values[f"h_{cname}"] = HASH_PREFIX + digest[:24]
            params.append({f"pk_{i}": row[i] for i in range(n_keys)} | values)
        stmt = (
            sa.update(table)
            .where(*(k == sa.bindparam(f"pk_{i}") for i, k in enumerate(keys)))
            .values({c: sa.bindparam(f"h_{c}") for c in hashed})
        )
        conn.execute(stmt, params)
    if plain:
        conn.execute(sa.update(table).where(pk.in_(ids)).values(plain))
    return len(ids)


def residue(engine: Engine, system: SqlSystem, consumer_ids: Iterable[object]) -> dict[str, int]:
    """Rows still owned by the consumers in tables whose strategy is to delete or mask them."""
    ids = _texts(consumer_ids)
    sql = MappedSql(engine, system)
    left: dict[str, int] = {}
    with engine.connect() as conn:
        for tname in erase_order(system):
            spec = system.tables[tname]
            if spec.erase is TableErase.keep:
                continue
            owned = sql.owned(tname)
            unerased = _unerased(owned.table, spec) if spec.erase is TableErase.mask else sa.true()
            n = 0
            for chunk in _chunks(typed_values(owned.consumer_key, ids)):
                stmt = sa.select(sa.func.count()).select_from(owned.from_clause)
                stmt = stmt.where(owned.consumer_key.in_(chunk), unerased)
                n += int(conn.execute(stmt).scalar() or 0)
            if n:
                left[tname] = n
    return left


def _unerased(table: sa.Table, spec) -> sa.ColumnElement:
    """A masked row still shows personal data if any column is not in its erased form."""
    checks = []
    for cname, col in spec.columns.items():
        c = table.c[cname]
        if col.erase is ColumnErase.nullify:
            checks.append(c.is_not(None))
        elif col.erase is ColumnErase.deidentify:
            checks.append(sa.and_(c.is_not(None), c != PLACEHOLDER))
        elif col.erase is ColumnErase.hash:
            # A hashed column holds text (the masked value); the cast only spells that for a
            # loosely typed column and is never on a key, so no index the CRM relies on is lost.
            text = c if isinstance(c.type, sa.String) else sa.cast(c, sa.String)
            checks.append(sa.and_(c.is_not(None), sa.not_(text.startswith(HASH_PREFIX))))
    return sa.or_(*checks) if checks else sa.false()


def _texts(consumer_ids: Iterable[object]) -> list[str]:
    """Consumer keys as text, sorted and unique (targets files keep them so)."""
    return sorted({key_text(c) for c in consumer_ids})


def _chunks(ids: list) -> Iterable[list]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]
