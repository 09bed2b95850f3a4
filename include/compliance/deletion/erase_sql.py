"""Erasing consumers from a SQL system, driven by the data map (R16.1, R19).

Two steps so that a crash and a rerun converge on the same receipt: `plan_erasure` counts, per
table and per consumer, what will be touched (stored before anything changes); `execute_erasure`
then applies each table's strategy, children before parents, one set-based statement per table and
chunk of consumers. Executing twice is harmless: erased rows are no longer owned by the consumer,
and hashed values are recognised and not hashed again.

`hash` is deletion, not pseudonymisation (R17, R16.1): the HMAC key is random, drawn once per
erasure run (`new_mask_key`: one `execute_erasure` call, i.e. one batch's system, or one retention
step) and never stored, logged or derived from the deployment's COMPLIANCE_HASH_KEY. Equal values
inside the run still hash alike, so joins and counts among the masked rows line up; nobody, the
company included, can recompute a hash from a value later, so the masked value cannot be linked
back to the person.

Consumer keys arrive as text (the targets files keep them so) and are compared in the key
column's own type (`sqlmap.typed_values`), never by casting the column, so the CRM's indexes
serve (any-CRM: integer, text and UUID keys). A composite primary key is matched as a row value.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core import checkpoints
from compliance.core.datamap.graph import chain_to_consumer, erase_order
from compliance.core.datamap.model import ColumnErase, SqlSystem, Table, TableErase
from compliance.core.hashing import keyed_hash
from compliance.core.sqlmap import MappedSql, key_text, typed_values

CHUNK = 1000
HASH_PREFIX = "cjh_"  # marks a masked value: recognised as erased whatever key made it
MASK_KEY_BYTES = 32
PLACEHOLDER = "[deleted]"


@dataclass
class TablePlan:
    table: str
    action: TableErase
    per_consumer: dict[str, int] = field(default_factory=dict)
    exception: str | None = None
    kept_columns: dict[str, str] = field(default_factory=dict)  # column -> R19 exception code
    # Under a legal hold (R19, `held`): rows kept whole, and parent rows kept for them with
    # their key, tenant and relation columns only (their other personal columns are erased).
    kept: dict[str, int] = field(default_factory=dict)  # consumer -> rows kept whole
    parents: dict[str, int] = field(default_factory=dict)  # consumer -> parent rows kept

    @property
    def rows(self) -> int:
        return sum(self.per_consumer.values())


def _new_plan(tname: str, spec: Table) -> TablePlan:
    """An empty plan for one table, naming the columns a mask keeps under an R19 exception."""
    plan = TablePlan(tname, spec.erase, exception=spec.exception and spec.exception.value)
    plan.kept_columns = {
        c: col.exception.value
        for c, col in spec.columns.items()
        if spec.erase is TableErase.mask and col.erase is ColumnErase.keep and col.exception
    }
    return plan


def plan_erasure(
    engine: Engine, system: SqlSystem, consumer_ids: Iterable[object], held: Held | None = None
) -> list[TablePlan]:
    """Rows touched per table and consumer (`per_consumer`: deleted or masked, parent rows kept
    for held rows included); rows a hold keeps whole are counted apart (`kept`, R19)."""
    ids = _texts(consumer_ids)
    if held:
        return _plan_held(engine, system, ids, held)
    sql = MappedSql(engine, system)
    plans = []
    with engine.connect() as conn:
        for tname in erase_order(system):
            spec = system.tables[tname]
            plan = _new_plan(tname, spec)
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


def new_mask_key() -> bytes:
    """A fresh random key for one erasure run's `hash` columns, to be dropped after it (R17).

    Kept only in the caller's memory: never stored, logged, put in XCom or a receipt. A rerun
    after a crash draws another; values hashed before the crash keep theirs (they are recognised
    by HASH_PREFIX and left alone), so the run still converges, only joins across the crash line
    stop lining up.
    """
    return secrets.token_bytes(MASK_KEY_BYTES)


def execute_erasure(
    engine: Engine,
    system: SqlSystem,
    consumer_ids: Iterable[object],
    hash_key: bytes | None = None,
    *,
    mask_key: bytes | None = None,
    held: Held | None = None,
) -> dict[str, int]:
    """Apply every table's strategy to the consumers' rows; returns rows affected per table.

    `held` (consumer -> tables a legal hold keeps whole, R19): those rows stay as they are; the
    parent rows they reference keep only their key, tenant and relation columns (R16.2).

    `hash` columns are hashed with `mask_key`, by default a random key drawn for this call and
    discarded with it (R17). `hash_key`, the deployment's keyed-hash secret, is accepted for the
    callers' sake and deliberately not used: a hash under a key the company keeps could be
    recomputed from a value, which is pseudonymisation, not deletion.
    """
    del hash_key  # never the masking key (R17)
    mask_key = mask_key or new_mask_key()
    ids = _texts(consumer_ids)
    sql = MappedSql(engine, system)
    affected: dict[str, int] = defaultdict(int)
    groups = _groups(ids, held)
    for tname in erase_order(system):
        spec = system.tables[tname]
        if spec.erase is TableErase.keep:
            continue
        owned = sql.owned(tname)
        keys = sql.key_columns(tname)
        pk = sql.primary_key(tname)  # the column, or the row value of a composite key
        for kept, texts, chunk in _held_chunks(owned.consumer_key, groups):
            if tname in kept:
                continue  # kept whole under a legal hold (R19)
            # One short transaction per table and chunk: locks are held briefly, and a crash
            # leaves whole chunks done or not done, which a rerun completes.
            with engine.begin() as conn:
                row_ids = (
                    sa.select(*keys)
                    .select_from(owned.from_clause)
                    .where(owned.consumer_key.in_(chunk))
                )
                needed = _needed(sql, system, tname, kept, texts)
                if needed is not None:  # parent rows of held rows: only what they need stays
                    parent = _parent_spec(owned.table, system, tname)
                    affected[tname] += _mask(
                        conn, owned.table, keys, parent, row_ids.where(needed), mask_key
                    )
                    row_ids = row_ids.where(sa.not_(needed))
                if spec.erase is TableErase.delete:
                    result = conn.execute(sa.delete(owned.table).where(pk.in_(row_ids)))
                    affected[tname] += result.rowcount or 0
                else:
                    affected[tname] += _mask(conn, owned.table, keys, spec, row_ids, mask_key)
                checkpoints.reached("erase_sql.in_chunk", table=tname, conn=conn)
            checkpoints.reached("erase_sql.after_chunk", table=tname)
    return {table: n for table, n in affected.items() if n}


def _mask(
    conn: sa.Connection, table: sa.Table, keys: list[sa.Column], spec, row_ids, mask_key: bytes
) -> int:
    """Erase the masked columns of the rows `row_ids` selects (their key columns, in order).

    `mask_key` must be a run's random key (`new_mask_key`), never a kept secret (R17).
    """
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
        # Keyed hashes under the run's random key: equal values within the run stay equal
        # (joins, counts), reruns skip what is already masked, and no one can recompute them
        # later (R17: irreversible, not a pseudonym).
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
                    digest = keyed_hash(mask_key, f"{table.name}.{cname}", str(value))
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


def residue(
    engine: Engine, system: SqlSystem, consumer_ids: Iterable[object], held: Held | None = None
) -> dict[str, int]:
    """Rows still owned by the consumers in tables whose strategy is to delete or mask them.

    Under a hold (`held`, R19) the kept tables are not residue; a parent row kept for held rows
    is residue only while a personal column other than its key, tenant and relation still
    holds a value."""
    ids = _texts(consumer_ids)
    sql = MappedSql(engine, system)
    groups = _groups(ids, held)
    left: dict[str, int] = {}
    with engine.connect() as conn:
        for tname in erase_order(system):
            spec = system.tables[tname]
            if spec.erase is TableErase.keep:
                continue
            owned = sql.owned(tname)
            unerased = _unerased(owned.table, spec) if spec.erase is TableErase.mask else sa.true()
            n = 0
            for kept, texts, chunk in _held_chunks(owned.consumer_key, groups):
                if tname in kept:
                    continue
                stmt = sa.select(sa.func.count()).select_from(owned.from_clause)
                stmt = stmt.where(owned.consumer_key.in_(chunk))
                needed = _needed(sql, system, tname, kept, texts)
                if needed is not None:
                    parent = _unerased(owned.table, _parent_spec(owned.table, system, tname))
                    n += int(conn.execute(stmt.where(needed, parent)).scalar() or 0)
                    stmt = stmt.where(sa.not_(needed))
                n += int(conn.execute(stmt.where(unerased)).scalar() or 0)
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


# -- legal holds (R19): what a hold keeps, and the parent rows held rows need -----------------

Held = Mapping[str, Iterable[str]]  # consumer key (text) -> tables a hold keeps whole


def _groups(ids: list[str], held: Held | None) -> list[tuple[frozenset[str], list[str]]]:
    """Consumers grouped by the tables holds keep of them: few groups, set-based statements."""
    by: dict[frozenset[str], list[str]] = defaultdict(list)
    for cid in ids:
        by[frozenset((held or {}).get(cid, ()))].append(cid)
    return sorted(by.items(), key=lambda kv: sorted(kv[0]))


def _held_chunks(
    consumer_key: sa.ColumnElement, groups: list[tuple[frozenset[str], list[str]]]
) -> Iterable[tuple[frozenset[str], list[str], list]]:
    """(kept tables, consumer keys as text, the same typed for `consumer_key`) per chunk."""
    for kept, group in groups:
        for texts in _chunks(group):
            chunk = typed_values(consumer_key, texts)
            if chunk:
                yield kept, texts, chunk


def _needed(
    sql: MappedSql, system: SqlSystem, tname: str, kept: frozenset[str], texts: list[str]
) -> sa.ColumnElement | None:
    """Rows of `tname` that a kept row below it references (directly or through its parents),
    for these consumers; None when no kept table hangs below `tname`.

    The subquery joins the kept table up its chain under aliases (`tname` and its ancestors are
    in the outer statement) and skips NULL references, so `NOT needed` is never NULL."""
    if tname in kept:
        return None
    base = sql.table(tname)
    terms: list[sa.ColumnElement] = []
    for held in sorted(kept):
        hops = chain_to_consumer(system, held)
        at = next((i for i, h in enumerate(hops) if h.target_table == tname), None)
        if at is None:
            continue
        frm: sa.FromClause = sql.table(held)
        current: sa.FromClause = frm
        joined: dict[str, sa.FromClause] = {held: frm}
        for i, hop in enumerate(hops[:-1]):
            target = sql.table(hop.target_table).alias(f"cj_held{i}")
            frm = frm.join(target, current.c[hop.column] == target.c[hop.target_column])
            joined[hop.target_table] = target
            current = target
        consumer = joined[hops[-1].table].c[hops[-1].column]
        ref = joined[hops[at].table].c[hops[at].column]
        typed = typed_values(consumer, texts)
        if not typed:
            continue
        sub = (
            sa.select(ref)
            .select_from(frm)
            .where(consumer.in_(typed), ref.is_not(None))
            .correlate(None)
        )
        terms.append(base.c[hops[at].target_column].in_(sub))
    return sa.or_(*terms) if terms else None


def _parent_spec(table: sa.Table, system: SqlSystem, tname: str) -> SimpleNamespace:
    """What a parent row kept for held rows below it loses (R16.2: keep only what the exception
    needs): every mapped personal column except its key, tenant and relation columns (and the
    columns its children reference). A `mask` table's columns follow their own strategy; other
    columns are nullified, or get the placeholder where the column is NOT NULL text; a NOT NULL
    non-text column (a flag) stays, the row cannot exist without it; `keep` columns stay under
    their own exception code."""
    spec = system.tables[tname]
    needed = {*spec.key_columns, spec.tenant_column}
    if spec.relation is not None:
        needed.add(spec.relation.column)
    needed |= {
        t.relation.target_column
        for t in system.tables.values()
        if t.relation is not None and t.relation.target_table == tname
    }
    columns: dict[str, SimpleNamespace] = {}
    for cname, col in spec.columns.items():
        if cname in needed or col.erase is ColumnErase.keep or cname not in table.c:
            continue
        if spec.erase is TableErase.mask:
            columns[cname] = SimpleNamespace(erase=col.erase)
        elif table.c[cname].nullable:
            columns[cname] = SimpleNamespace(erase=ColumnErase.nullify)
        elif isinstance(table.c[cname].type, sa.String):
            columns[cname] = SimpleNamespace(erase=ColumnErase.deidentify)
    return SimpleNamespace(columns=columns)


def parent_columns(engine: Engine, system: SqlSystem, tname: str) -> tuple[list[str], list[str]]:
    """(columns a parent row keeps, mapped columns it loses), for the receipt: names only."""
    table = MappedSql(engine, system).table(tname)
    lost = sorted(_parent_spec(table, system, tname).columns)
    return sorted(c.name for c in table.columns if c.name not in lost), lost


def _plan_held(engine: Engine, system: SqlSystem, ids: list[str], held: Held) -> list[TablePlan]:
    """`plan_erasure` under holds: per group of consumers with the same kept tables."""
    sql = MappedSql(engine, system)
    groups = _groups(ids, held)
    plans = []
    with engine.connect() as conn:
        for tname in erase_order(system):
            spec = system.tables[tname]
            plan = _new_plan(tname, spec)
            owned = sql.owned(tname)
            for kept, texts, chunk in _held_chunks(owned.consumer_key, groups):
                base = (
                    sa.select(owned.consumer_key, sa.func.count())
                    .select_from(owned.from_clause)
                    .where(owned.consumer_key.in_(chunk))
                    .group_by(owned.consumer_key)
                )
                into = plan.kept if tname in kept else plan.per_consumer
                for consumer, n in conn.execute(base):
                    into[key_text(consumer)] = int(n)
                needed = _needed(sql, system, tname, kept, texts)
                if needed is not None:
                    for consumer, n in conn.execute(base.where(needed)):
                        plan.parents[key_text(consumer)] = int(n)
            plans.append(plan)
    return plans


def _texts(consumer_ids: Iterable[object]) -> list[str]:
    """Consumer keys as text, sorted and unique (targets files keep them so)."""
    return sorted({key_text(c) for c in consumer_ids})


def _chunks(ids: list) -> Iterable[list]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]
