"""Who is due for offboarding, who must wait, and how much data each client has (a dry run).

A contract's end is read from the tenant registry's `ended_column` (docs/data-map.md): a date
or timestamp, NULL while the contract runs. A client is due `grace_days` after that day (the
grace period lets the client ask for its data back, Art. 28(3)(g)), and stays due until a
deletion receipt exists for it. A client under any active legal hold (R19) is not offboarded:
a hold on one consumer or one table still means the client's data is needed, so the whole
client waits and the report says why.

Counts only: what leaves here for XCom, receipts and the ledger is client ids (our business
clients, not consumers), table and store names and numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from botocore.exceptions import ClientError
from sqlalchemy import Engine

from compliance.core import workspace_layout
from compliance.core.context import JobContext
from compliance.core.datamap.model import LogStore, RecordingStore, SqlSystem
from compliance.core.sqlmap import MappedSql, key_text, typed_values
from compliance.core.stores.s3 import list_keys
from compliance.offboarding import logs
from compliance.requests import holds

RECEIPTS = f"{workspace_layout.RECEIPTS}offboarding/"
EXPORTS = workspace_layout.OFFBOARDING
# Workspace folders keyed by client that may hold its consumers' data (R20: nothing outlives
# the contract). Receipts stay: they hold counts and keyed hashes, and R22 keeps them.
CLIENT_PREFIXES = (
    workspace_layout.ACCESS,
    workspace_layout.ACCEPTED,
    workspace_layout.HELD,
    workspace_layout.INBOX,
)


class NotConfigured(ValueError):
    """The data map does not say how a contract's end is known."""

    reason = "no_ended_column"


def receipt_key(client_id: str, action: str) -> str:
    return f"{RECEIPTS}{client_id}/{action}.json"


@dataclass
class Client:
    """One ended client: when its contract ended, when it is due, and what may block it."""

    client_id: str
    ended_on: date
    due_on: date
    held: list[str] = field(default_factory=list)  # R19 exception codes of active holds

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "ended_on": self.ended_on.isoformat(),
            "due_on": self.due_on.isoformat(),
            "held": self.held,
        }


def _day(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:  # SQLite may hand back text
        return datetime.fromisoformat(str(value)).date()
    except ValueError:
        return None


def ended(engine: Engine, system: SqlSystem) -> dict[str, date]:
    """client id (text) -> the day its contract ended, from the registry's `ended_column`."""
    reg = system.tenants
    if reg is None or reg.ended_column is None:
        return {}
    table = sa.Table(reg.table, sa.MetaData(), autoload_with=engine)
    if reg.ended_column not in table.c:
        raise NotConfigured(
            f"tenants.ended_column: the registry {reg.table!r} has no column "
            f"{reg.ended_column!r} (docs/data-map.md; G4 Art. 28(3)(g))"
        )
    col = table.c[reg.ended_column]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c[reg.key], col).where(col.is_not(None)))
        return {key_text(k): d for k, v in rows if k is not None and (d := _day(v)) is not None}


def registries(ctx: JobContext) -> list[str]:
    """The systems whose tenant registry says when a contract ended."""
    return [
        name
        for name, system in sorted(ctx.datamap.systems.items())
        if system.tenants is not None and system.tenants.ended_column is not None
    ]


def due_clients(ctx: JobContext, only: str | None = None, *, again: bool = False) -> list[Client]:
    """Clients whose contract ended at least the grace period ago, oldest end first.

    Clients with a deletion receipt are done and left out (`again` keeps them: a rerun after a
    crash or a late-arriving log object). `only` restricts the run to one client."""
    names = registries(ctx)
    if not names:
        raise NotConfigured(
            "no system's tenant registry names an ended_column: the data map does not say when "
            "a contract ends (docs/offboarding.md)"
        )
    today = ctx.now().date()
    grace = timedelta(days=ctx.settings.offboarding_grace_days)
    found: dict[str, date] = {}
    for name in names:
        for client, day in ended(ctx.engine(name), ctx.datamap.systems[name]).items():
            found[client] = min(day, found.get(client, day))
    out = []
    for client, day in sorted(found.items(), key=lambda kv: (kv[1], kv[0])):
        if only is not None and client != only:
            continue
        if day + grace > today:
            continue
        if not again and exists(ctx, receipt_key(client, "delete")):
            continue
        out.append(Client(client, day, day + grace, hold_codes(ctx, client)))
    return out


def hold_codes(ctx: JobContext, client: str) -> list[str]:
    """R19: the exception codes of every active hold of this client, in any system."""
    codes: set[str] = set()
    for name, system in ctx.datamap.systems.items():
        for hold in holds.active_holds(ctx.engine(name), system, ctx.now(), [client]):
            codes.add(hold.code or "unspecified")
    return sorted(codes)


def exists(ctx: JobContext, key: str) -> bool:
    ws = ctx.workspace
    try:
        ws.s3.head_object(Bucket=ws.bucket, Key=key)
    except ClientError:
        return False
    return True


def tenant_filter(column: sa.ColumnElement, clients: list[str]) -> sa.ColumnElement:
    """`column IN (clients)` with the clients spelt in the column's own type (any-CRM keys)."""
    return column.in_(typed_values(column, clients))


def table_counts(engine: Engine, system: SqlSystem, clients: list[str]) -> dict[str, Counter]:
    """client -> table -> rows of that client, one grouped SELECT per mapped table."""
    sql = MappedSql(engine, system)
    out: dict[str, Counter] = {c: Counter() for c in clients}
    with engine.connect() as conn:
        for tname in sorted(system.tables):
            owned = sql.owned(tname)
            stmt = (
                sa.select(owned.tenant, sa.func.count())
                .select_from(owned.from_clause)
                .where(tenant_filter(owned.tenant, clients))
                .group_by(owned.tenant)
            )
            for tenant, n in conn.execute(stmt):
                out.setdefault(key_text(tenant), Counter())[tname] += int(n)
    return out


def recording_keys(
    engine: Engine, system: SqlSystem, store: RecordingStore, client: str
) -> list[str]:
    """The object keys of one client's recordings (read before its rows are deleted)."""
    owned = MappedSql(engine, system).owned(store.table)
    stmt = (
        sa.select(owned.table.c[store.key_column])
        .select_from(owned.from_clause)
        .where(tenant_filter(owned.tenant, [client]))
    )
    with engine.connect() as conn:
        return sorted({str(k) for (k,) in conn.execute(stmt) if k})


def workspace_keys(ctx: JobContext, client: str) -> list[str]:
    ws = ctx.workspace
    return [
        o["Key"]
        for prefix in CLIENT_PREFIXES
        for o in list_keys(ws.s3, ws.bucket, f"{prefix}{client}/")
    ]


def inventory(ctx: JobContext, clients: list[str]) -> dict[str, dict[str, Any]]:
    """What each client has in every store: the dry run's report and the receipts' "planned"."""
    out: dict[str, dict[str, Any]] = {
        c: {"tables": {}, "log_lines": {}, "recordings": {}, "workspace_objects": 0}
        for c in clients
    }
    if not clients:
        return out
    for sname, system in sorted(ctx.datamap.systems.items()):
        for client, per_table in table_counts(ctx.engine(sname), system, clients).items():
            if client in out:
                out[client]["tables"].update(
                    {f"{sname}.{t}": n for t, n in sorted(per_table.items())}
                )
    for name, store in sorted(ctx.datamap.stores.items()):
        if isinstance(store, LogStore):
            counts = logs.count_lines(ctx.store(name), store, set(clients))
            for client in clients:
                out[client]["log_lines"][name] = counts.get(client, 0)
        elif isinstance(store, RecordingStore):
            system = ctx.datamap.systems[store.system]
            for client in clients:
                keys = recording_keys(ctx.engine(store.system), system, store, client)
                out[client]["recordings"][name] = len(keys)
    for client in clients:
        out[client]["workspace_objects"] = len(workspace_keys(ctx, client))
    return out
