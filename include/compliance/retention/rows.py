"""Which rows a retention rule touches: the one predicate builder shared by plan and execute.

The dry-run plan and the real run must not be able to disagree, so both build their WHERE clauses
here and nowhere else:

- age: the row's own time column is older than as-of minus the rule's period (per-client
  overrides by the row's tenant); consumers expire by the consumer table's time column, or by their
  last activity in every mapped table (R27 "criteria"); children only by collection time (R26);
- holds: rows an active legal hold protects are excluded (R19, `holds.py`);
- within a wave, rules never compete for a row: a rule on a child table leaves alone the rows
  under a parent row that the parent's rule deletes (with its children, which the foreign keys
  require), so the order in which mapped tasks run does not change who deletes what;
- across waves, the plan also subtracts what earlier waves will have removed (`claimed`): the
  executing task does not need to, because those rows are gone by then.

Everything is SQLAlchemy Core on the data map's tables (`MappedSql`), so it runs on SQLite and
PostgreSQL alike. Subqueries are uncorrelated unless stated, so a table may appear at several
levels without SQLAlchemy correlating it away.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap.graph import chain_to_consumer, time_path
from compliance.core.datamap.model import DataMap, SqlSystem, TableErase
from compliance.core.sqlmap import KeyTypeError, MappedSql, Owned, typed_value

# One implementation of "is this column still in its unerased form": erasure's own.
from compliance.deletion.erase_sql import _unerased
from compliance.requests.holds import scopes_holding
from compliance.retention.holds import Hold, held_expr
from compliance.retention.policy import (
    WAVE_ORDER,
    Action,
    Rule,
    Step,
    Wave,
    ancestors,
    descendants,
    recording_stores,
)


class RetentionError(Exception):
    """The sweep cannot go on; `reason` is a code, the message is for a compliance officer."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class SystemRows:
    """Predicates over one SQL system's rows for one as-of date, hold set and rule selection."""

    def __init__(
        self,
        engine: Engine,
        dm: DataMap,
        system_name: str,
        as_of: date,
        holds: list[Hold],
        steps: list[Step],
        minors_flag: str | None = None,
    ) -> None:
        self.engine = engine
        self.minors_flag = minors_flag  # column of the consumer table: true for children
        self.dm = dm
        self.name = system_name
        self.system: SqlSystem = dm.systems[system_name]
        self.as_of = as_of
        self.holds = holds
        self.steps = [s for s in steps if s.system == system_name]
        present = set(sa.inspect(engine).get_table_names())
        self.present = {t for t in self.system.tables if t in present}
        self.sql = MappedSql(engine, self.system, self.present)

    # -- tables --------------------------------------------------------------------------------

    def table(self, name: str) -> sa.Table:
        if name not in self.present:
            raise RetentionError(
                "table-missing",
                f"table {self.name}.{name} is in the data map but not in the database "
                "(run data_inventory)",
            )
        return self.sql.table(name)

    def owned(self, name: str) -> Owned:
        self.table(name)
        return self.sql.owned(name)

    def pk_columns(self, name: str) -> list[sa.Column]:
        """The primary key's columns (several for a composite key)."""
        table = self.table(name)
        return [table.c[c] for c in self.system.tables[name].key_columns]

    def pk(self, name: str) -> sa.ColumnElement:
        """The primary key as one expression: the column, or the row value `(a, b)` of a
        composite key (`IN (SELECT a, b ...)` and row comparisons: SQLite >= 3.15, PostgreSQL)."""
        cols = self.pk_columns(name)
        return cols[0] if len(cols) == 1 else sa.tuple_(*cols)

    def time(self, name: str) -> sa.ColumnElement:
        """When a row of `name` was collected: its own time column, or the nearest dated
        ancestor's (a child expires when its parent's time is past the period). The ancestor is
        joined into `owned(name).from_clause`, so statements using this select from that."""
        when = self.owned(name).time
        if when is None:  # the policy check refuses such rules; a guard, never a crash in SQL
            raise RetentionError(
                "undated-table",
                f"table {self.name}.{name} has no time column and no table up its relation "
                "chain has one, so no rule can expire its rows by age (docs/retention.md)",
            )
        return when

    @property
    def consumer(self) -> str:
        return self.system.consumer_table

    # -- age -------------------------------------------------------------------------------------

    def older(self, rule: Rule, tenant: sa.ColumnElement, when: sa.ColumnElement):
        """`when` is before the cutoff of the row's client (override) or the rule's default."""
        return by_tenant(rule, tenant, lambda period: when < period.cutoff(self.as_of))

    def recent(self, rule: Rule, tenant: sa.ColumnElement, when: sa.ColumnElement):
        """`when` is at or after the cutoff (activity that keeps a consumer)."""
        return by_tenant(rule, tenant, lambda period: when >= period.cutoff(self.as_of))

    # -- hold scopes -------------------------------------------------------------------------

    def consumer_scopes(self) -> set[str]:
        """Expiring a consumer touches every table and recording of the system."""
        return set(self.system.tables) | set(recording_stores(self.dm, self.name))

    def row_scopes(self, table: str) -> set[str]:
        """Deleting a row deletes its children and its recording too; a hold on a table above
        keeps it (a held row's descendants are part of the held records, R19, `holds`)."""
        tables = {table, *descendants(self.system, table)}
        stores = {n for n, s in recording_stores(self.dm, self.name).items() if s.table in tables}
        return scopes_holding(self.dm, self.name, tables | stores)

    # -- consumer rules ------------------------------------------------------------------------

    def consumer_parts(self, step: Step) -> tuple[sa.ColumnElement, sa.ColumnElement]:
        """(base, held) over the consumer table: base = old enough (and a child, for minors)."""
        rule = step.rule
        c = self.consumer
        table = self.table(c)
        spec = self.system.tables[c]
        tenant = table.c[spec.tenant_column] if spec.tenant_column else sa.null()
        base = self.older(rule, tenant, self.time(c))
        if rule.consumers == "minors":
            if not self.minors_flag:
                raise RetentionError("minors-flag", f"no minors flag for system {self.name!r}")
            base = sa.and_(base, table.c[self.minors_flag] == sa.true())
        if rule.effective_since == "last_activity":
            names = rule.activity if rule.activity is not None else list(self.system.tables)
            for name in sorted(set(names) - {c}):
                dated = time_path(self.system, name)
                if name not in self.present or dated is None:
                    continue
                if any(hop.target_table == c for hop in dated[0]):
                    continue  # dated by the consumer row itself: no activity beyond `base`
                # Aliased ancestors: a tenant or time join through the consumer table must not
                # shadow the outer consumer row this subquery is correlated with.
                owned = self.sql.owned(name, aliased=True)
                if owned.time is None:
                    continue
                recent = (
                    sa.select(sa.literal(1))
                    .select_from(owned.from_clause)
                    .where(owned.consumer_key == self.pk(c), self.recent(rule, tenant, owned.time))
                    .correlate(table)
                )
                base = sa.and_(base, ~sa.exists(recent))
        held = held_expr(self.holds, self.consumer_scopes(), tenant, self.pk(c))
        return base, held

    def consumer_pred(self, step: Step) -> sa.ColumnElement:
        base, held = self.consumer_parts(step)
        return sa.and_(base, ~held)

    def consumer_ids(self, step: Step) -> sa.Select:
        """The consumers `step` expires (one-column select, uncorrelated)."""
        c = self.consumer
        return sa.select(*self.pk_columns(c)).where(self.consumer_pred(step)).correlate(None)

    # -- row rules (delete, aggregate) ---------------------------------------------------------

    def row_parts(self, step: Step) -> tuple[sa.ColumnElement, sa.ColumnElement]:
        """(base, held) over `owned(step.table)`; base leaves rows to a parent's rule."""
        name = step.table or ""
        owned = self.owned(name)
        base = self.older(step.rule, owned.tenant, self.time(name))
        parents = set(ancestors(self.system, name))
        for other in self.steps:
            if other.wave is Wave.rows and other is not step and other.table in parents:
                base = sa.and_(
                    base,
                    ~self.pk(name).in_(self.under(name, other.table or "", self.row_ids(other))),
                )
        held = held_expr(self.holds, self.row_scopes(name), owned.tenant, owned.consumer_key)
        return base, held

    def row_pred(self, step: Step) -> sa.ColumnElement:
        base, held = self.row_parts(step)
        return sa.and_(base, ~held)

    def row_ids(self, step: Step) -> sa.Select:
        name = step.table or ""
        owned = self.owned(name)
        return (
            sa.select(*self.pk_columns(name))
            .select_from(owned.from_clause)
            .where(self.row_pred(step))
            .correlate(None)
        )

    def under(self, table: str, ancestor: str, ancestor_ids: sa.Select | list) -> sa.Select:
        """pks of `table` rows whose `ancestor` row is among `ancestor_ids`."""
        hops = chain_to_consumer(self.system, table)
        path = []
        for hop in hops:
            path.append(hop)
            if hop.target_table == ancestor:
                break
        else:
            raise ValueError(f"{ancestor!r} is not an ancestor of {table!r}")
        from_clause: sa.FromClause = self.table(table)
        current = self.table(table)
        for hop in path[:-1]:
            target = self.table(hop.target_table)
            from_clause = from_clause.join(
                target, current.c[hop.column] == target.c[hop.target_column]
            )
            current = target
        last = path[-1]
        anc = self.table(ancestor)
        anc_pk = self.pk(ancestor)
        if anc.c[last.target_column] is anc_pk:
            cond = current.c[last.column].in_(ancestor_ids)
        else:
            keys = sa.select(anc.c[last.target_column]).where(anc_pk.in_(ancestor_ids))
            cond = current.c[last.column].in_(keys.correlate(None))
        return (
            sa.select(*self.pk_columns(table)).select_from(from_clause).where(cond).correlate(None)
        )

    # -- deidentify ----------------------------------------------------------------------------

    def deid_parts(
        self, step: Step, table: str, columns: tuple[str, ...]
    ) -> tuple[sa.ColumnElement, sa.ColumnElement]:
        """(base, held): old enough and some listed column not yet in its erased form."""
        owned = self.owned(table)
        base = sa.and_(
            self.older(step.rule, owned.tenant, self.time(table)),
            _unerased(self.table(table), self.column_spec(table, columns)),
        )
        scopes = scopes_holding(self.dm, self.name, {table})  # held above: kept too (R19)
        held = held_expr(self.holds, scopes, owned.tenant, owned.consumer_key)
        return base, held

    def column_spec(self, table: str, columns: tuple[str, ...]) -> SimpleNamespace:
        """The data map's erase strategy of just these columns (what erasure's helpers take)."""
        spec = self.system.tables[table]
        return SimpleNamespace(columns={c: spec.columns[c] for c in columns})

    # -- what earlier waves remove (plan only) ----------------------------------------------------

    def claimed(self, table: str, step: Step) -> sa.ColumnElement:
        """Rows of `table` that selected rules of waves before `step`'s remove or erase first."""
        mine = WAVE_ORDER.index(step.wave)
        erase = self.system.tables[table].erase
        removes_rows = step.rule.action in (Action.delete, Action.aggregate)
        terms: list[sa.ColumnElement] = []
        for other in self.steps:
            if WAVE_ORDER.index(other.wave) >= mine:
                continue
            if other.wave in (Wave.minors, Wave.consumers):
                if erase is TableErase.keep or (removes_rows and erase is TableErase.mask):
                    continue  # erasure leaves these rows (or their columns) as they are
                owned = self.owned(table)
                terms.append(owned.consumer_key.in_(self.consumer_ids(other)))
            elif other.wave is Wave.rows and other.table:
                if other.table == table:
                    terms.append(self.pk(table).in_(self.row_ids(other)))
                elif other.table in ancestors(self.system, table):
                    terms.append(
                        self.pk(table).in_(self.under(table, other.table, self.row_ids(other)))
                    )
        return sa.or_(*terms) if terms else sa.false()


# -- the request log (state database) ------------------------------------------------------------

TERMINAL = ("completed", "rejected")


def request_log_pred(requests: sa.Table, rule: Rule, as_of: date) -> sa.ColumnElement:
    """Request records past the period (R22: never younger than 24 months, validated).

    Only finished requests go (open and deferred ones are live work), and the period runs from
    the later of receipt and response, so a request answered late keeps its full period. A
    refused document whose receipt time was unknown (null, issue 15) counts from its response.
    """
    tenant = requests.c.client_id

    def before(col: sa.ColumnElement) -> sa.ColumnElement:
        return by_tenant(rule, tenant, lambda period: col < period.cutoff(as_of))

    return sa.and_(
        requests.c.status.in_(TERMINAL),
        before(sa.func.coalesce(requests.c.received_at, requests.c.completed_at)),
        sa.or_(requests.c.completed_at.is_(None), before(requests.c.completed_at)),
    )


def by_tenant(
    rule: Rule, tenant: sa.ColumnElement, test: Callable[[Any], sa.ColumnElement]
) -> sa.ColumnElement:
    """`test(period)` with each client's override for its rows, the default for the others.

    Overrides are keyed by the tenant id as text and compared in the tenant column's own type
    (`sqlmap.typed_value`, never a cast, so the CRM's tenant index serves); an override for a
    tenant the column cannot hold (a text id against an integer column) matches no row.
    """
    default = test(rule.period)
    typed = []
    for client, period in sorted(rule.overrides.items()):
        try:
            typed.append((typed_value(tenant, client), period))
        except KeyTypeError:
            continue
    if not typed:
        return default
    terms = [sa.and_(tenant == value, test(period)) for value, period in typed]
    return sa.or_(*terms, sa.and_(tenant.not_in([v for v, _ in typed]), default))
