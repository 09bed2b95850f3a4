"""The sweep's plan: a dry-run diff of what each rule will delete, de-identify or leave held.

`plan_sweep` counts, per rule and per table (or store), exactly the rows and objects the execute
step will touch, with the same predicates (`rows.py`) and the same object listing
(`objects.plan_store`); earlier waves' removals are subtracted, because they run first. A dry run
is this plan and nothing else: it only reads.

`Sweep` carries everything a step needs as plain values: the data map, the policy, the as-of date,
the moment used for S3 ages and Object Lock (`now`), and factories for engines and S3 clients by
connection id (`compliance.jobs.retention` looks them up in its `JobContext`; tests pass their
own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core import workspace_layout
from compliance.core.context import Workspace
from compliance.core.datamap.model import DataMap, TableErase
from compliance.core.stores.recordings import recording_keys
from compliance.deletion.erase_sql import plan_erasure
from compliance.retention import objects
from compliance.retention import workspace as ws_areas
from compliance.retention.holds import Hold, active_holds, held_clients, honoured
from compliance.retention.policy import (
    WAVE_ORDER,
    Action,
    Policy,
    Step,
    Wave,
    descendants,
    object_stores,
    recording_stores,
    resolve,
)
from compliance.retention.rows import RetentionError, SystemRows, request_log_pred

STATE_CONN_ID = "compliance_db"  # the state database (compliance.requests.state.STATE_CONN_ID)


@dataclass
class Sweep:
    """One sweep's inputs; cheap to rebuild in every task from the same values."""

    datamap: DataMap
    policy: Policy
    as_of: date
    now: datetime  # aware UTC: S3 ages and Object Lock dates are real time, not as-of time
    engine: Callable[[str], Engine]
    s3: Callable[[str], Any]
    hash_key: bytes
    only: tuple[str, ...] | None = None  # a subset of rule ids (the trigger form)
    state_conn: str = STATE_CONN_ID
    workspace: Workspace | None = None  # the jobs' own bucket (workspace rules, issue 16)
    _live: dict[str, set[str]] | None = field(default=None, repr=False)
    _steps: list[Step] | None = field(default=None, repr=False)
    _holds: dict[str, list[Hold]] = field(default_factory=dict, repr=False)
    _rows: dict[str, SystemRows] = field(default_factory=dict, repr=False)

    def steps(self) -> list[Step]:
        """The selected rules, resolved, in sweep order."""
        if self._steps is None:
            steps = resolve(self.policy, self.datamap)
            if self.only is not None:
                known = {s.id for s in steps}
                unknown = sorted(set(self.only) - known)
                if unknown:
                    raise RetentionError(
                        "unknown-rule",
                        f"no rule {', '.join(map(repr, unknown))} in the policy "
                        f"(rules: {', '.join(sorted(known))})",
                    )
                steps = [s for s in steps if s.id in self.only]
            self._steps = steps
        return self._steps

    def step(self, rule_id: str) -> Step:
        for step in self.steps():
            if step.id == rule_id:
                return step
        raise RetentionError("unknown-rule", f"rule {rule_id!r} is not selected in this sweep")

    def holds(self, system: str) -> list[Hold]:
        if system not in self._holds:
            spec = self.datamap.systems[system]
            found = active_holds(self.engine(spec.connection), spec, self.as_of)
            self._holds[system] = honoured(self.datamap, system, found)  # R19
        return self._holds[system]

    def rows(self, system: str) -> SystemRows:
        if system not in self._rows:
            flag_system, _, flag = self.policy.minors.flag.split(".")
            self._rows[system] = SystemRows(
                self.engine(self.datamap.systems[system].connection),
                self.datamap,
                system,
                self.as_of,
                self.holds(system),
                self.steps(),
                minors_flag=flag if flag_system == system else None,
            )
        return self._rows[system]


def plan_sweep(sweep: Sweep) -> dict[str, Any]:
    """The dry-run diff: per rule, what will be deleted, de-identified, or left held."""
    steps = sweep.steps()
    systems = sorted({s.system for s in steps if s.system} | _store_systems(sweep, steps))
    return {
        "as_of": sweep.as_of.isoformat(),
        "now": sweep.now.isoformat(),
        "rules": [plan_step(sweep, step) for step in steps],
        "waves": {w.value: [s.id for s in steps if s.wave is w] for w in WAVE_ORDER},
        "holds": {name: len(sweep.holds(name)) for name in systems},
    }


def describe(step: Step) -> dict[str, Any]:
    rule = step.rule
    return {
        "rule": rule.id,
        "wave": step.wave.value,
        "action": rule.action.value,
        "target": rule.target_text(),
        "period": str(rule.period),
        "overrides": {str(c): str(p) for c, p in sorted(rule.overrides.items())},
    }


def plan_step(sweep: Sweep, step: Step) -> dict[str, Any]:
    if step.wave in (Wave.minors, Wave.consumers):
        counts = _plan_consumers(sweep, step)
    elif step.rule.request_log:
        counts = _plan_request_log(sweep, step)
    elif step.wave is Wave.rows:
        counts = _plan_rows(sweep, step)
    elif step.wave is Wave.deidentify:
        counts = _plan_deidentify(sweep, step)
    elif step.workspace:
        counts = {f"workspace:{step.workspace}": area_plan(sweep, step).counts()}
    else:
        counts = {f"store:{step.store}": store_plan(sweep, step).counts()}
    return {**describe(step), "counts": counts}


def area_plan(sweep: Sweep, step: Step) -> ws_areas.AreaPlan:
    """A workspace rule's plan (R27, issue 16); live work is read from the state DB once."""
    area = workspace_layout.BY_NAME[step.workspace or ""]
    if sweep.workspace is None:  # a sweep built without the workspace (some tests)
        return ws_areas.AreaPlan(area.name, "", "", missing=True)
    if sweep._live is None:
        sweep._live = ws_areas.live_keys(sweep.engine(sweep.state_conn))
    ws = sweep.workspace
    return ws_areas.plan_area(ws.s3, ws.bucket, area, step.rule, sweep.as_of, sweep._live)


def store_plan(sweep: Sweep, step: Step) -> objects.StorePlan:
    store = object_stores(sweep.datamap)[step.store or ""]
    clients = held_clients(sweep.holds(store.system), {step.store or ""})
    return objects.plan_store(
        sweep.s3(store.connection),
        step.store or "",
        store,
        step.rule,
        sweep.as_of,
        sweep.now,
        clients,
    )


def _count(conn: sa.Connection, from_clause: sa.FromClause, *where: sa.ColumnElement) -> int:
    stmt = sa.select(sa.func.count()).select_from(from_clause).where(*where)
    return int(conn.execute(stmt).scalar() or 0)


def _plan_consumers(sweep: Sweep, step: Step) -> dict[str, dict[str, int]]:
    system = step.system or ""
    rows = sweep.rows(system)
    consumer = rows.consumer
    base, held = rows.consumer_parts(step)
    claimed = rows.claimed(consumer, step)
    pk = rows.pk(consumer)
    with rows.engine.connect() as conn:
        ids = list(conn.execute(sa.select(pk).where(base, ~held, ~claimed).order_by(pk)).scalars())
        n_held = _count(conn, rows.table(consumer), base, held, ~claimed)
    counts: dict[str, dict[str, int]] = {"consumers": {"expire": len(ids), "held": n_held}}
    spec = sweep.datamap.systems[system]
    for tp in plan_erasure(rows.engine, spec, ids):
        if tp.action is TableErase.keep or not tp.rows:
            continue
        counts[tp.table] = {"delete" if tp.action is TableErase.delete else "mask": tp.rows}
    for name, store in recording_stores(sweep.datamap, system).items():
        keys = recording_keys(rows.engine, spec, store, ids)
        n = sum(len(v) for v in keys.values())
        if n:
            counts[f"audio:{name}"] = {"delete": n}
    return counts


def _plan_rows(sweep: Sweep, step: Step) -> dict[str, dict[str, int]]:
    system = step.system or ""
    rows = sweep.rows(system)
    name = step.table or ""
    owned = rows.owned(name)
    base, held = rows.row_parts(step)
    claimed = rows.claimed(name, step)
    pk = rows.pk(name)
    key = "aggregate" if step.rule.action is Action.aggregate else "delete"
    chosen = (
        sa.select(pk).select_from(owned.from_clause).where(base, ~held, ~claimed).correlate(None)
    )
    counts: dict[str, dict[str, int]] = {}
    with rows.engine.connect() as conn:
        counts[name] = {
            key: _count(conn, owned.from_clause, base, ~held, ~claimed),
            "held": _count(conn, owned.from_clause, base, held, ~claimed),
        }
        spec = sweep.datamap.systems[system]
        for child in descendants(spec, name):
            if child in rows.present:
                n = _count(
                    conn, rows.table(child), rows.pk(child).in_(rows.under(child, name, chosen))
                )
                counts[child] = {"delete": n}
        for sname, store in recording_stores(sweep.datamap, system).items():
            n = _audio_count(conn, rows, name, store.table, store.key_column, chosen)
            if n is not None:
                counts[f"audio:{sname}"] = {"delete": n}
    return counts


def _audio_count(
    conn: sa.Connection, rows: SystemRows, name: str, table: str, key_column: str, chosen: sa.Select
) -> int | None:
    """Recordings under the chosen rows (None when the rule's rows carry no recordings)."""
    if table == name:
        where = rows.pk(table).in_(chosen)
    elif table in descendants(rows.system, name):
        where = rows.pk(table).in_(rows.under(table, name, chosen))
    else:
        return None
    key = rows.table(table).c[key_column]
    return _count(conn, rows.table(table), where, key.is_not(None))


def _plan_deidentify(sweep: Sweep, step: Step) -> dict[str, dict[str, int]]:
    rows = sweep.rows(step.system or "")
    counts: dict[str, dict[str, int]] = {}
    with rows.engine.connect() as conn:
        for table, columns in step.columns:
            if table not in rows.present:
                raise RetentionError("table-missing", f"table {step.system}.{table} is missing")
            owned = rows.owned(table)
            base, held = rows.deid_parts(step, table, columns)
            claimed = rows.claimed(table, step)
            counts[table] = {
                "deidentify": _count(conn, owned.from_clause, base, ~held, ~claimed),
                "held": _count(conn, owned.from_clause, base, held, ~claimed),
            }
    return counts


def _plan_request_log(sweep: Sweep, step: Step) -> dict[str, dict[str, int]]:
    engine = sweep.engine(sweep.state_conn)
    requests = request_log_table(engine)
    if requests is None:
        return {"cj_requests": {"delete": 0}}
    with engine.connect() as conn:
        n = _count(conn, requests, request_log_pred(requests, step.rule, sweep.as_of))
    return {"cj_requests": {"delete": n}}


def request_log_table(engine: Engine) -> sa.Table | None:
    """The state database's request log, or None before the state schema exists."""
    if not sa.inspect(engine).has_table("cj_requests"):
        return None
    from compliance.requests.state import cj_requests

    return cj_requests


def _store_systems(sweep: Sweep, steps: list[Step]) -> set[str]:
    stores = object_stores(sweep.datamap)
    return {stores[s.store].system for s in steps if s.store in stores}
