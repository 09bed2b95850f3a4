"""Carrying out one retention rule, in short batches that a crash and a rerun complete.

Row rules walk the table by primary key in ranges holding `batch_rows` matching rows each (the
range's upper bound is read without a write lock); one short transaction then re-evaluates the
predicate inside the range, deletes the matching rows' children (the foreign keys need it),
aggregates them in the database if asked, and deletes them. No id list travels through Python.
No transaction ever spans more than one batch, so locks are held for milliseconds, and a crash
leaves whole batches done or not done: a rerun evaluates the same predicate (`rows.py`) and
finishes the rest. Progress (counts only) is logged per batch.

Consumer expiry reuses erasure (`erase_sql.execute_erasure`: children before parents, one short
transaction per table and chunk), after deleting every version of the consumers' recordings: the
audio goes first, so a crash can leave a row without its audio but never audio without its row.

Recordings under S3 Object Lock cannot be deleted; the step then fails rather than drop the row
that points at them (the report and the task log say which rule).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql

from compliance.core import checkpoints
from compliance.core.datamap.graph import chain_to_consumer
from compliance.core.datamap.model import TableErase
from compliance.core.stores.recordings import recording_keys

# Column erasure (nullify, placeholder, keyed hash) is erasure's own: one implementation.
from compliance.deletion.erase_sql import _mask, execute_erasure, new_mask_key
from compliance.retention import objects
from compliance.retention import workspace as ws_areas
from compliance.retention.aggregates import (
    FOLD_ISOLATION,
    aggregates_table,
    can_fold,
    delete_counted,
    tenant_as_text,
)
from compliance.retention.aggregates import aggregate as _aggregate
from compliance.retention.plan import Sweep, area_plan, describe, request_log_table, store_plan
from compliance.retention.policy import (
    Action,
    Step,
    Wave,
    descendants,
    object_stores,
    recording_stores,
)
from compliance.retention.rows import SystemRows, request_log_pred

log = logging.getLogger(__name__)

CONSUMER_BATCH = 500  # consumers per erasure call (each table: one short transaction)
OnBatch = Callable[[str, int, dict[str, dict[str, int]]], None]


class Progress:
    """Counts committed batches, times each write transaction, and reports after each commit."""

    def __init__(self, rule_id: str, on_batch: OnBatch | None) -> None:
        self.rule_id = rule_id
        self.on_batch = on_batch
        self.batches = 0
        self.longest = 0.0  # seconds of the longest write transaction (issue 9 measures it)
        self.last = 0.0  # seconds of the latest one (batch sizing follows it)

    @contextmanager
    def transaction(self, engine: Engine, isolation: str | None = None) -> Iterator[sa.Connection]:
        """One write transaction, timed; `isolation`: its level (None: the engine's default)."""
        started = time.perf_counter()
        with engine.connect() as conn:
            if isolation is not None:
                conn.execution_options(isolation_level=isolation)
            with conn.begin():
                yield conn
                checkpoints.reached("retention.in_batch", rule=self.rule_id, conn=conn)
        self.last = time.perf_counter() - started
        self.longest = max(self.longest, self.last)

    def committed(self, counts: dict[str, dict[str, int]]) -> None:
        """Call after a batch's commit: a crash in between loses no count."""
        self.batches += 1
        done = {t: sum(v for k, v in c.items() if k != "held") for t, c in counts.items()}
        log.info(
            "rule %s: batch %d committed (longest transaction %.0f ms); so far %s",
            self.rule_id,
            self.batches,
            self.longest * 1000,
            json.dumps(done, sort_keys=True),
        )
        checkpoints.reached("retention.after_batch", rule=self.rule_id, n=self.batches)
        if self.on_batch:
            self.on_batch(self.rule_id, self.batches, counts)


def execute_step(sweep: Sweep, rule_id: str, on_batch: OnBatch | None = None) -> dict[str, Any]:
    """Run one rule for real; returns `describe(step)`, `counts` shaped like the plan's, the
    number of batches and the longest write transaction in seconds.

    `on_batch(rule_id, batch_number, counts_so_far)` is called after each committed batch (tests
    use it to simulate a crash mid-rule).
    """
    step = sweep.step(rule_id)
    progress = Progress(rule_id, on_batch)
    if step.wave in (Wave.minors, Wave.consumers):
        counts = _expire_consumers(sweep, step, progress)
    elif step.rule.request_log:
        counts = _purge_request_log(sweep, step, progress)
    elif step.wave is Wave.rows:
        counts = _delete_rows(sweep, step, progress)
    elif step.wave is Wave.deidentify:
        counts = _deidentify(sweep, step, progress)
    elif step.workspace:
        plan = area_plan(sweep, step)
        ws = sweep.workspace
        done = ws_areas.expire_area(ws.s3, plan) if ws is not None else plan.counts()
        counts = {f"workspace:{step.workspace}": done}
    else:
        store = object_stores(sweep.datamap)[step.store or ""]
        plan = store_plan(sweep, step)
        counts = {
            f"store:{step.store}": objects.expire_store(sweep.s3(store.connection), store, plan)
        }
    return {
        **describe(step),
        "counts": counts,
        "batches": progress.batches,
        "longest_transaction_s": round(progress.longest, 3),
    }


def _add(counts: dict[str, dict[str, int]], target: str, key: str, n: int) -> None:
    if n:
        counts.setdefault(target, {})
        counts[target][key] = counts[target].get(key, 0) + n


# -- consumers ---------------------------------------------------------------------------------


def _expire_consumers(sweep: Sweep, step: Step, progress: Progress) -> dict[str, dict[str, int]]:
    system = step.system or ""
    spec = sweep.datamap.systems[system]
    rows = sweep.rows(system)
    pk = rows.pk(rows.consumer)
    pred = rows.consumer_pred(step)
    with rows.engine.connect() as conn:
        ids = list(conn.execute(sa.select(pk).where(pred).order_by(pk)).scalars())
    counts: dict[str, dict[str, int]] = {"consumers": {"expire": 0}}
    stores = recording_stores(sweep.datamap, system)
    mask_key = new_mask_key()  # R17: one random key for the step, never stored
    for lo in range(0, len(ids), CONSUMER_BATCH):
        chunk = ids[lo : lo + CONSUMER_BATCH]
        with rows.engine.connect() as conn:  # still expiring? (a hold may have arrived)
            chunk = list(conn.execute(sa.select(pk).where(pk.in_(chunk), pred)).scalars())
        if not chunk:
            continue
        for name, store in stores.items():
            keys = [
                k for ks in recording_keys(rows.engine, spec, store, chunk).values() for k in ks
            ]
            if keys:
                objects.delete_keys(sweep.s3(store.connection), store.bucket, keys)
                _add(counts, f"audio:{name}", "delete", len(keys))
                checkpoints.reached("retention.after_audio", rule=step.id)
        done = execute_erasure(rows.engine, spec, chunk, mask_key=mask_key)
        for table, affected in done.items():
            kind = "delete" if spec.tables[table].erase is TableErase.delete else "mask"
            _add(counts, table, kind, affected)
        counts["consumers"]["expire"] += len(chunk)
        progress.committed(counts)  # erasure commits per table and chunk (not timed here)
    return counts


# -- rows ----------------------------------------------------------------------------------


MAX_BATCH_ROWS = 100_000  # the most rows one transaction deletes, however fast batches are


def _batches(
    sweep: Sweep, rows: SystemRows, table: str, pred: sa.ColumnElement, progress: Progress
) -> Iterator[sa.ColumnElement]:
    """The key ranges one rule's statements walk, one transaction each (sized by the policy)."""
    size = sweep.policy.batch_rows
    highs = _bounds(rows, table, pred, size)
    return _spans(rows.pk_columns(table), highs, size, sweep.policy.batch_seconds, progress)


def _bounds(rows: SystemRows, table: str, pred: sa.ColumnElement, size: int) -> list[Any]:
    """The upper keys of successive pk ranges holding `size` matching rows each (the last one
    the rest), from one query: every `size`-th matching pk, and the last.

    The last range ends at the last match: expired rows are the oldest, usually the lowest
    keys, and an open-ended range would scan the live rest of the table in one transaction
    (5 s at 22M rows). Rows that start matching later are the next sweep's.
    """
    owned = rows.owned(table)
    cols = rows.pk_columns(table)  # several for a composite key: ranges of row values
    if rows.engine.dialect.name == "postgresql" and len(cols) == 1:
        return _pg_bounds(rows, owned.from_clause, cols[0], pred, size)
    ranked = (
        sa.select(
            *(c.label(f"pk{i}") for i, c in enumerate(cols)),
            sa.func.row_number().over(order_by=cols).label("n"),
            sa.func.count().over().label("total"),
        )
        .select_from(owned.from_clause)
        .where(pred)
        .subquery()
    )
    keys = [ranked.c[f"pk{i}"] for i in range(len(cols))]
    bounds = (
        sa.select(*keys)
        .where(sa.or_(ranked.c.n % size == 0, ranked.c.n == ranked.c.total))
        .order_by(*keys)
    )
    with rows.engine.connect() as conn:
        found = conn.execute(bounds).all()
    return [r[0] if len(cols) == 1 else tuple(r) for r in found]


GRID = 4096  # fixed quantiles `_pg_bounds` reads with the count, in the same pass


def _pg_bounds(
    rows: SystemRows, from_clause: sa.FromClause, pk: sa.Column, pred: sa.ColumnElement, size: int
) -> list[Any]:
    """`_bounds` on PostgreSQL for a one-column key, from aggregates instead of two window
    functions (which sorted and numbered every match and spilled `count(*) OVER ()` to disk:
    0.76 s for 300k matches against 0.34 s, issue 19).

    One pass reads the count and `percentile_disc` at GRID fixed fractions; every k-th grid
    point is a bound, k the most grid steps that hold at most `size` rows (the last fraction is
    1: the last match). Only when one grid step holds more than `size` rows (over GRID * size
    matches) does a second pass ask for every `size`-th row exactly. Before, the count was a
    pass of its own: about a fifth of the purge at 200,000 contacts."""
    grid = [i / GRID for i in range(1, GRID + 1)]
    with rows.engine.connect() as conn:
        total, found = conn.execute(
            sa.select(sa.func.count(), _percentiles(pk, grid)).select_from(from_clause).where(pred)
        ).one()
        if not total:
            return []
        k = size * GRID // total
        if k >= 1:
            return sorted(set(found[k - 1 :: k]) | {found[-1]})
        # half a row early: n / total in floating point can land on row n + 1
        fractions = [(n - 0.5) / total for n in range(size, total, size)] + [1.0]
        found = conn.execute(
            sa.select(_percentiles(pk, fractions)).select_from(from_clause).where(pred)
        ).scalar()
    return sorted(set(found or []))


def _percentiles(pk: sa.Column, fractions: list[float]) -> sa.ColumnElement:
    return sa.func.percentile_disc(sa.literal(fractions, postgresql.ARRAY(sa.Float))).within_group(
        pk
    )


def _spans(
    key: sa.ColumnElement | list[sa.Column],
    highs: list[Any],
    size: int,
    seconds: float | None,
    progress: Progress,
) -> Iterator[sa.ColumnElement]:
    """Key ranges as predicates, in pk order: the statements of a batch re-evaluate the rule's
    predicate inside the range in the database, so no id list travels through Python.

    Without `seconds` each range is one bound step (`size` matching rows). With it, a range
    spans as many steps as the last transaction's pace says fit in `seconds` (at most doubling
    from one batch to the next, at most MAX_BATCH_ROWS rows): per-batch overhead stops
    dominating on a fast database while a slow one keeps short transactions.
    """
    # A composite key (a list of columns, highs are tuples) compares as a row value,
    # `(a, b) > (1, 2)`: the key's index still serves (SQLite >= 3.15, PostgreSQL).
    cols = key if isinstance(key, list) else [key]
    pk = cols[0] if len(cols) == 1 else sa.tuple_(*cols)

    def bound(value: Any) -> Any:
        if len(cols) == 1:
            return value
        return sa.tuple_(*(sa.literal(v, c.type) for v, c in zip(value, cols, strict=True)))

    steps, i, last = 1, 0, None
    while i < len(highs):
        j = min(i + steps, len(highs))
        hi = highs[j - 1]
        yield pk <= bound(hi) if last is None else sa.and_(pk > bound(last), pk <= bound(hi))
        if seconds is not None and progress.last > 0:
            fit = int(seconds / (progress.last / (j - i)))
            steps = max(1, min(2 * (j - i), fit, MAX_BATCH_ROWS // size))
        i, last = j, hi


def _delete_rows(sweep: Sweep, step: Step, progress: Progress) -> dict[str, dict[str, int]]:
    system = step.system or ""
    rows = sweep.rows(system)
    name = step.table or ""
    owned = rows.owned(name)
    pred = rows.row_pred(step)
    key = "aggregate" if step.rule.action is Action.aggregate else "delete"
    spec = sweep.datamap.systems[system]
    children = sorted(
        (c for c in descendants(spec, name) if c in rows.present),
        key=lambda c: -len(chain_to_consumer(spec, c)),
    )
    audio = {
        n: s
        for n, s in recording_stores(sweep.datamap, system).items()
        if s.table == name or s.table in children
    }
    agg_table = None
    if step.rule.action is Action.aggregate:
        agg_table = aggregates_table(step.rule.aggregate.into if step.rule.aggregate else None)
        agg_table.create(rows.engine, checkfirst=True)
    counts: dict[str, dict[str, int]] = {name: {key: 0}}
    table = rows.table(name)
    simple = agg_table is None and not children and owned.from_clause is table
    fold, as_text = False, True  # count and delete on one snapshot (PostgreSQL)
    if agg_table is not None and not children:
        with rows.engine.connect() as conn:
            fold = can_fold(conn, rows, step)
            as_text = tenant_as_text(conn, agg_table)
    for span in _batches(sweep, rows, name, pred, progress):
        batch = (
            sa.select(*rows.pk_columns(name))
            .select_from(owned.from_clause)
            .where(span, pred)
            .correlate(None)
        )
        for sname, store in audio.items():  # objects first: see the module docstring
            where = sa.and_(span, pred) if store.table == name else None
            keys = _keys(rows, store.table, store.key_column, name, batch, where)
            if keys:
                objects.delete_keys(sweep.s3(store.connection), store.bucket, keys)
                _add(counts, f"audio:{sname}", "delete", len(keys))
                checkpoints.reached("retention.after_audio", rule=step.id)
        isolation = FOLD_ISOLATION if fold else None
        with progress.transaction(rows.engine, isolation) as conn:
            if simple:  # one statement: the DELETE re-checks the predicate itself
                gone = conn.execute(sa.delete(table).where(span, pred)).rowcount
            elif fold and agg_table is not None:  # counted, then deleted, on one snapshot
                gone = delete_counted(conn, rows, step, agg_table, sa.and_(span, pred), as_text)
            else:
                gone = _delete_batch(conn, rows, step, span, pred, children, agg_table, counts)
            counts[name][key] += gone or 0
        progress.committed(counts)
    return counts


def _delete_batch(
    conn: sa.Connection,
    rows: SystemRows,
    step: Step,
    span: sa.ColumnElement,
    pred: sa.ColumnElement,
    children: list[str],
    agg_table: sa.Table | None,
    counts: dict[str, dict[str, int]],
) -> int:
    """Children first (the foreign keys), the aggregate, then the rows; returns rows deleted.

    Every statement selects the batch as `span AND pred`, evaluated inside this transaction."""
    name = step.table or ""
    pk = rows.pk(name)
    owned = rows.owned(name)
    batch = (
        sa.select(*rows.pk_columns(name))
        .select_from(owned.from_clause)
        .where(span, pred)
        .correlate(None)
    )
    if agg_table is not None:
        _aggregate(conn, rows, step, agg_table, sa.and_(span, pred))
    for child in children:
        under = rows.under(child, name, batch)
        gone = conn.execute(sa.delete(rows.table(child)).where(rows.pk(child).in_(under)))
        _add(counts, child, "delete", gone.rowcount or 0)
    # `span` on the outer DELETE too: it lets the database walk the key range instead of
    # scanning the whole table for the semi-join (5 s per batch at 22M rows otherwise).
    doomed = sa.delete(rows.table(name)).where(span, pk.in_(batch))
    return conn.execute(doomed).rowcount or 0


def _keys(
    rows: SystemRows,
    table: str,
    key_column: str,
    name: str,
    ids: sa.Select,
    where: sa.ColumnElement | None,
) -> list[str]:
    if where is None:
        where = rows.pk(table).in_(rows.under(table, name, ids))
    col = rows.table(table).c[key_column]
    with rows.engine.connect() as conn:
        return [k for k in conn.execute(sa.select(col).where(where, col.is_not(None))).scalars()]


# -- de-identification ---------------------------------------------------------------------


def _deidentify(sweep: Sweep, step: Step, progress: Progress) -> dict[str, dict[str, int]]:
    rows = sweep.rows(step.system or "")
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for table, columns in step.columns:
        owned = rows.owned(table)
        pk = rows.pk_columns(table)
        base, held = rows.deid_parts(step, table, columns)
        pred = sa.and_(base, ~held)
        spec = rows.column_spec(table, columns)
        counts[table]["deidentify"] = 0
        # R17: `hash` columns get this step's random key, never the kept COMPLIANCE_HASH_KEY.
        mask_key = new_mask_key()
        for span in _batches(sweep, rows, table, pred, progress):
            with progress.transaction(rows.engine) as conn:
                chosen = sa.select(*pk).select_from(owned.from_clause).where(span, pred)
                counts[table]["deidentify"] += _mask(
                    conn, rows.table(table), pk, spec, chosen, mask_key
                )
            progress.committed(dict(counts))
    return dict(counts)


# -- the request log --------------------------------------------------------------------------


def _purge_request_log(sweep: Sweep, step: Step, progress: Progress) -> dict[str, dict[str, int]]:
    """Request records past the period, with their dedupe keys, notices and plan lines.

    Tombstones stay (R20: they keep deleted data deleted); only their link to the request goes.
    """
    engine = sweep.engine(sweep.state_conn)
    requests = request_log_table(engine)
    counts: dict[str, dict[str, int]] = {"cj_requests": {"delete": 0}}
    if requests is None:
        return counts
    from compliance.requests.state import (
        cj_batch_lines,
        cj_batch_plan,
        cj_notices,
        cj_request_keys,
        cj_tombstones,
    )

    pred = request_log_pred(requests, step.rule, sweep.as_of)
    last = None
    while True:
        stmt = sa.select(requests.c.id).where(pred)
        if last is not None:
            stmt = stmt.where(requests.c.id > last)
        with engine.connect() as conn:
            ids = list(
                conn.execute(stmt.order_by(requests.c.id).limit(sweep.policy.batch_rows)).scalars()
            )
        if not ids:
            return counts
        last = ids[-1]
        with progress.transaction(engine) as conn:
            ids = list(
                conn.execute(sa.select(requests.c.id).where(requests.c.id.in_(ids), pred)).scalars()
            )
            for child in (cj_request_keys, cj_notices, cj_batch_plan, cj_batch_lines):
                conn.execute(sa.delete(child).where(child.c.request_pk.in_(ids)))
            conn.execute(
                sa.update(cj_tombstones)
                .where(cj_tombstones.c.request_pk.in_(ids))
                .values(request_pk=None)
            )
            counts["cj_requests"]["delete"] += (
                conn.execute(sa.delete(requests).where(requests.c.id.in_(ids))).rowcount or 0
            )
        progress.committed(counts)
