"""Foundations of the compliance state database that the ground floor needs too: the shared
`metadata`, the UTC timestamp column type, id column types and the two transaction helpers.

Why here and not in `compliance.requests.state`: the audit ledger (`compliance.core.ledger`)
keeps its table in the same database and commits in the callers' transactions. It used to import
these from the requests layer, which imports the ledger back (a cycle). Now both build on this
module; `compliance.requests.schema` declares the request tables on the same `metadata`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeDecorator

STATE_CONN_ID = "compliance_db"


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC on every backend, returned timezone-aware (UTC).

    SQLite has no time zones and PostgreSQL `timestamptz` would round-trip differently, so one
    convention for both: aware values are converted to UTC, naive ones are taken as UTC.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return to_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime (naive input is taken to be UTC already)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite only autoincrements INTEGER
# Tenant (client) ids as text: the CRM's may be integers, text or UUIDs (any-CRM, issue 14).
CLIENT_ID = String(255)

# --------------------------------------------------------------------------- tables


# Every state table (requests, batches, tombstones, notices, the ledger) is declared on this.
metadata = MetaData()


@contextmanager
def transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A new transaction for an engine; a connection is already in the caller's, used as is."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


def insert_if_absent(conn: Connection, table: Table) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the two dialects we support."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - guarded by tests on both supported backends
        raise NotImplementedError(f"state database dialect {conn.dialect.name!r}")
    return insert(table).on_conflict_do_nothing()
