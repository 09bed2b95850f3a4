"""Legal holds (R19): which clients, consumers or data scopes must not be erased right now.

The registry is a table the data map names (`systems.<name>.holds`). A hold is active while its
expiry is unset or later than the moment asked about, so an expired hold simply stops applying.
Deletion defers a request whose consumer is under any active hold (client-wide holds included);
retention excludes held rows and objects from its sweep.

Client and consumer ids are text here (as the state DB keeps them); the registry is queried in
its own column types (`sqlmap.typed_values`), so a VARCHAR client column works on PostgreSQL and
its index serves (any-CRM, issue 14).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.datamap.model import SqlSystem
from compliance.sqlmap import key_text, typed_values

ALL = "all"


@dataclass(frozen=True)
class Hold:
    client_id: str  # the tenant id as text (sqlmap.key_text)
    consumer_id: str | None  # the consumer key as text; None: the whole client
    scope: str  # "all" or a table / store name
    exception_code: str
    expires_at: datetime | None = None

    def covers(self, client_id: object, consumer_id: object = None, scope: str = ALL) -> bool:
        if self.client_id != key_text(client_id):
            return False
        if self.consumer_id is not None and self.consumer_id != key_text(consumer_id):
            return False
        return self.scope == ALL or scope == ALL or self.scope == scope


def active_holds(
    engine: Engine,
    system: SqlSystem,
    as_of: datetime | date,
    client_ids: Iterable[object] | None = None,
) -> list[Hold]:
    """Holds in force at `as_of` (a date means its midnight), sorted; reasons stay in the CRM."""
    reg = system.holds
    if reg is None or not sa.inspect(engine).has_table(reg.table):
        return []
    table = sa.Table(reg.table, sa.MetaData(), autoload_with=engine)
    expires = table.c[reg.expires_column]
    moment = as_of if isinstance(as_of, datetime) else datetime.combine(as_of, time())
    if engine.dialect.name == "sqlite" or moment.tzinfo is None:
        moment = moment.replace(tzinfo=None)
    stmt = sa.select(
        table.c[reg.client_column],
        table.c[reg.consumer_column],
        table.c[reg.scope_column],
        table.c[reg.exception_column],
        expires,
    ).where(sa.or_(expires.is_(None), expires > moment))
    if client_ids is not None:
        client = table.c[reg.client_column]
        texts = sorted({key_text(c) for c in client_ids})
        stmt = stmt.where(client.in_(typed_values(client, texts)))
    with engine.connect() as conn:
        found = [
            Hold(key_text(c), None if k is None else key_text(k), str(s or ALL), str(code), exp)
            for c, k, s, code, exp in conn.execute(stmt)
        ]
    return sorted(found, key=lambda h: (h.client_id, str(h.consumer_id or ""), h.scope))


def holding(holds: Iterable[Hold], client_id: object, consumer_ids: Iterable[object]) -> list[Hold]:
    """The holds that apply to any of these consumers of this client (any scope)."""
    ids = list(consumer_ids)
    client = key_text(client_id)
    return [
        h
        for h in holds
        if h.client_id == client
        and (h.consumer_id is None or any(h.covers(client_id, cid) for cid in ids))
    ]
