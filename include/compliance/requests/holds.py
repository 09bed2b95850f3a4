"""Legal holds (R19): which clients, consumers or data scopes must not be erased right now.

The registry is a table the data map names (`systems.<name>.holds`). A hold is active while its
expiry is unset or later than the moment asked about, so an expired hold simply stops applying.

What a hold keeps, and nothing more (R16.2, R19, R21: delete the rest, keep only what the
exception needs; docs/deletion.md "Legal holds"):

- scope `all` on a consumer: that consumer's request is deferred whole; scope `all` on a client
  (no consumer): every request of that client is deferred whole;
- scope = a table of the map (on one consumer, or client-wide): that table's rows of the
  consumer **and the rows below them** (their descendants along the relations: an attachment is
  part of the held message) are kept whole. A recording store whose table is held keeps its
  audio too; a hold on a recording store keeps the audio and the table rows that point at it
  (otherwise the audio could never be found and erased when the hold ends);
- the rows above a held row (its parent, up to the consumer row) stay only because foreign keys
  need them: such a *parent row* keeps its key, tenant and relation columns (and NOT NULL
  non-text columns the database cannot empty); every other mapped personal column is erased
  (`nullify`, or the `[deleted]` placeholder where the column is NOT NULL text). Parent rows no
  held row needs are erased as usual;
- scope = a log store: the request's lines in that store are kept;
- everything else of the request is erased now; the request is `partial` until the hold ends,
  then the rest is erased and the request completes.

A hold's exception code must be one of R19's (`ExceptionCode`). A row with another code, or
with a scope the data map does not know, is still honoured (never silently erase what someone
put on hold): an unknown code keeps what the scope covers under `invalid_hold_code`, an unknown
scope defers the whole request under `invalid_hold_scope`; the watchdog alerts on both so the
registry gets fixed. A `law_enforcement_hold` lapses 90 days after it was placed (R19,
1798.145(a)) unless a newer record renews it (each record lapses 90 days after its own
placement); without a placed-at column the lapse cannot be computed and `expires_at` is taken as
given.

Client and consumer ids are text here (as the state DB keeps them); the registry is queried in
its own column types (`sqlmap.typed_values`), so a VARCHAR client column works on PostgreSQL and
its index serves (any-CRM, issue 14).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap.graph import chain_to_consumer
from compliance.core.datamap.model import DataMap, ExceptionCode, RecordingStore, SqlSystem
from compliance.core.sqlmap import key_text, typed_values

ALL = "all"
INVALID_CODE = "invalid_hold_code"
INVALID_SCOPE = "invalid_hold_scope"
LAW_ENFORCEMENT_LAPSE = timedelta(days=90)  # R19: 1798.145(a), renewable by a new record
EXPIRY_WARNING = timedelta(days=7)  # the watchdog warns this long before a hold ends
VALID_CODES = frozenset(c.value for c in ExceptionCode)


@dataclass(frozen=True)
class Hold:
    client_id: str  # the tenant id as text (sqlmap.key_text)
    consumer_id: str | None  # the consumer key as text; None: the whole client
    scope: str  # "all" or a table / store name
    exception_code: str  # as the registry spells it (may be invalid: see `code`)
    expires_at: datetime | None = None  # when it stops applying (the R19 lapse included)
    placed_at: datetime | None = None
    lapses: bool = False  # expires_at is the 90-day law-enforcement lapse, not the registry's
    ref: str | None = None  # the registry row's key, for staff (never an identity)

    @property
    def valid(self) -> bool:
        return self.exception_code in VALID_CODES

    @property
    def code(self) -> str:
        """The R19 code, or `invalid_hold_code` (the raw text never leaves the registry)."""
        return self.exception_code if self.valid else INVALID_CODE

    @property
    def client_wide(self) -> bool:
        return self.consumer_id is None

    def applies(self, client_id: object, consumer_id: object = None) -> bool:
        """The hold is on this client, and on this consumer (or on the whole client)."""
        if self.client_id != key_text(client_id):
            return False
        return self.consumer_id is None or self.consumer_id == key_text(consumer_id)

    def covers(self, client_id: object, consumer_id: object = None, scope: str = ALL) -> bool:
        """The hold keeps `scope` (a table or store name; ALL: everything) of this consumer.

        A scoped hold does not cover ALL: it keeps its scope, the rest may be erased (R16.2)."""
        return self.applies(client_id, consumer_id) and (self.scope == ALL or self.scope == scope)


def naive_utc(value: datetime | date) -> datetime:
    """Registry times are naive UTC on SQLite and TIMESTAMP columns; compare them so."""
    moment = value if isinstance(value, datetime) else datetime.combine(value, time())
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def placed_column(system: SqlSystem, table: sa.Table) -> str | None:
    """The registry's placed-at column, or None when it has none.

    The default (`created_at`) is optional: a registry without it cannot compute the R19 90-day
    lapse (expires_at is then taken as given). A column the map names explicitly must exist."""
    reg = system.holds
    name = getattr(reg, "placed_column", None)
    if name is None:
        return None
    if name in table.c:
        return name
    if "placed_column" in reg.model_fields_set:
        raise ValueError(
            f"holds.placed_column: the hold registry {reg.table!r} has no column {name!r} (R19)"
        )
    return None


def registry_holds(
    engine: Engine, system: SqlSystem, client_ids: Iterable[object] | None = None
) -> list[Hold]:
    """Every hold record (active or not), the R19 lapse applied, sorted."""
    reg = system.holds
    if reg is None or not sa.inspect(engine).has_table(reg.table):
        return []
    table = sa.Table(reg.table, sa.MetaData(), autoload_with=engine)
    placed = placed_column(system, table)
    pk = [c for c in table.primary_key.columns]
    cols = [
        table.c[reg.client_column],
        table.c[reg.consumer_column],
        table.c[reg.scope_column],
        table.c[reg.exception_column],
        table.c[reg.expires_column],
        table.c[placed] if placed else sa.null(),
        pk[0] if len(pk) == 1 else sa.null(),
    ]
    stmt = sa.select(*cols)
    if client_ids is not None:
        client = table.c[reg.client_column]
        texts = sorted({key_text(c) for c in client_ids})
        stmt = stmt.where(client.in_(typed_values(client, texts)))
    found = []
    with engine.connect() as conn:
        for c, k, s, code, exp, at, ref in conn.execute(stmt):
            code = str(code or "").strip()
            lapses = False
            if code == ExceptionCode.law_enforcement_hold.value and isinstance(at, datetime):
                lapse = at + LAW_ENFORCEMENT_LAPSE
                if exp is None or lapse < exp:
                    exp, lapses = lapse, True
            found.append(
                Hold(
                    key_text(c),
                    None if k is None else key_text(k),
                    str(s or ALL).strip() or ALL,
                    code,
                    exp,
                    at if isinstance(at, datetime) else None,
                    lapses,
                    None if ref is None else key_text(ref),
                )
            )
    return sorted(found, key=lambda h: (h.client_id, str(h.consumer_id or ""), h.scope, h.code))


def active_holds(
    engine: Engine,
    system: SqlSystem,
    as_of: datetime | date,
    client_ids: Iterable[object] | None = None,
) -> list[Hold]:
    """Holds in force at `as_of` (a date means its midnight), sorted; reasons stay in the CRM."""
    moment = naive_utc(as_of)
    return [
        h
        for h in registry_holds(engine, system, client_ids)
        if h.expires_at is None or naive_utc(h.expires_at) > moment
    ]


def holding(holds: Iterable[Hold], client_id: object, consumer_ids: Iterable[object]) -> list[Hold]:
    """The holds that apply to any of these consumers of this client (any scope)."""
    ids = list(consumer_ids)
    return [
        h
        for h in holds
        if any(h.applies(client_id, cid) for cid in ids) or (h.client_wide and h.applies(client_id))
    ]


# -- what a scope keeps --------------------------------------------------------------------------


def known_scope(dm: DataMap, system_name: str, scope: str) -> bool:
    """`all`, a table of this system, or a store of the map that belongs to this system."""
    if scope == ALL or scope in dm.systems[system_name].tables:
        return True
    store = dm.stores.get(scope)
    return store is not None and getattr(store, "system", None) == system_name


def descendants(system: SqlSystem, table: str) -> set[str]:
    """Tables whose relation chain passes through `table`."""
    return {
        name
        for name in system.tables
        if name != table and any(h.target_table == table for h in chain_to_consumer(system, name))
    }


def kept_tables(dm: DataMap, system_name: str, scope: str) -> set[str]:
    """Tables whose rows a hold with `scope` keeps whole (the held table and what hangs below it;
    for a recording store, the table holding its keys)."""
    system = dm.systems[system_name]
    store = dm.stores.get(scope)
    if isinstance(store, RecordingStore) and store.system == system_name:
        scope = store.table
    if scope not in system.tables:
        return set()
    return {scope, *descendants(system, scope)}


def kept_stores(dm: DataMap, system_name: str, scope: str) -> set[str]:
    """Stores a hold with `scope` keeps (for this system's consumers): the store itself, or the
    recording stores whose key table the hold keeps."""
    if scope in dm.stores:
        return {scope}
    tables = kept_tables(dm, system_name, scope)
    return {
        n
        for n, s in dm.stores.items()
        if isinstance(s, RecordingStore) and s.system == system_name and s.table in tables
    }


def parent_tables(system: SqlSystem, held: Iterable[str]) -> set[str]:
    """Tables above held tables (up to the consumer table) that are not held themselves: their
    rows a held row references are kept with their key, tenant and relation columns only."""
    held = set(held)
    out: set[str] = set()
    for name in held:
        out |= {h.target_table for h in chain_to_consumer(system, name)}
    return out - held


def scopes_holding(dm: DataMap, system_name: str, names: Iterable[str]) -> set[str]:
    """Hold scopes that keep any of `names` (tables or stores): each name, every table above a
    table (a hold on a message keeps its attachments), a recording store's key table (and the
    tables above it), and the recording stores of a table. Retention asks this (R19)."""
    system = dm.systems[system_name]
    out: set[str] = set()
    for name in names:
        out.add(name)
        store = dm.stores.get(name)
        table = store.table if isinstance(store, RecordingStore) else name
        if table in system.tables:
            out.add(table)
            out |= {h.target_table for h in chain_to_consumer(system, table)}
    out |= {
        n
        for n, s in dm.stores.items()
        if isinstance(s, RecordingStore) and s.system == system_name and s.table in out
    }
    return out


def expiring(
    holds: Iterable[Hold], now: datetime, within: timedelta = EXPIRY_WARNING
) -> list[Hold]:
    """Holds ending within `within` of `now` (the watchdog warns: the rest is then erased)."""
    start, end = naive_utc(now), naive_utc(now + within)
    return [h for h in holds if h.expires_at and start < naive_utc(h.expires_at) <= end]


def held_for_consumers(
    dm: DataMap, system_name: str, active: Iterable[Hold], tenant_of: dict[str, str]
) -> tuple[set[str], dict[str, set[str]]]:
    """For consumers (key -> tenant, as text): those a hold keeps whole (scope `all` or a scope
    the map does not know), and the tables scoped holds keep of the others (`erase_sql` `held`).
    Used where no request plans the erasure (a backup restore re-applying tombstones, R18)."""
    whole: set[str] = set()
    held: dict[str, set[str]] = {}
    for h in active:
        covered = [c for c, t in tenant_of.items() if t == h.client_id and h.applies(t, c)]
        if h.scope == ALL or not known_scope(dm, system_name, h.scope):
            whole |= set(covered)
            continue
        for c in covered:
            held.setdefault(c, set()).update(kept_tables(dm, system_name, h.scope))
    return whole, {c: t for c, t in held.items() if c not in whole}
