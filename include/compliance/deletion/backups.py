"""CRM backup snapshots: restoring one re-applies every deletion made since (R18).

CCPA lets deletion from backups wait until a backup is restored or used (Reg 7022(d)); the
condition is that the deletion is re-applied *before* restored data goes live. Erasure records a
tombstone per erased identity (a keyed hash, never the value, R20). `restore` loads a snapshot
(`<prefix>YYYY-MM-DD/<table>.csv.gz`, PostgreSQL COPY CSV forms) into a database that has the
schema, finds every consumer whose identities hash to a tombstone of the same tenant, and erases
them with the same data-map-driven code as a deletion request, before anyone uses the database.

`python -m compliance backups restore --store crm_backups --day D --db URL --state-db URL`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.compression import GZIP
from compliance.core.datamap.model import BackupStore, DataMap, IdentityType
from compliance.core.sqlmap import MappedSql, key_text
from compliance.core.stores.s3 import list_keys, list_prefixes
from compliance.deletion import erase_sql
from compliance.deletion.targets import tombstone_hash
from compliance.requests import holds, state
from compliance.requests.resolve import identity_columns

CHUNK = 5000


def snapshot_days(s3: Any, store: BackupStore) -> list[str]:
    return sorted(
        p[len(store.prefix) :].rstrip("/") for p in list_prefixes(s3, store.bucket, store.prefix)
    )


def restore(
    s3: Any,
    dm: DataMap,
    store_name: str,
    day: str,
    engine: Engine,
    state_engine: Engine,
    hash_key: bytes,
) -> dict[str, Any]:
    """Load the snapshot of `day` into `engine` (tables must exist), then re-apply erasures."""
    store = dm.stores[store_name]
    if not isinstance(store, BackupStore):
        raise ValueError(f"store {store_name!r} is not a backup store")
    date.fromisoformat(day)  # refuse anything but a date before touching S3
    md = sa.MetaData()
    md.reflect(engine)
    loaded: dict[str, int] = {}
    prefix = f"{store.prefix}{day}/"
    keys = [o["Key"] for o in list_keys(s3, store.bucket, prefix) if o["Key"].endswith(".csv.gz")]
    if not keys:
        raise LookupError(f"no snapshot for {day} under s3://{store.bucket}/{prefix}")
    by_table = {k[len(prefix) : -len(".csv.gz")]: k for k in keys}
    for table in md.sorted_tables:  # parents before children (foreign keys)
        if table.name in by_table:
            loaded[table.name] = _load(s3, store.bucket, by_table[table.name], engine, table)
    erased = reapply_tombstones(engine, dm, store.system, state_engine, hash_key)
    return {"day": day, "rows_loaded": loaded, "erased_consumers": erased, "rules": ["R18", "R20"]}


def reapply_tombstones(
    engine: Engine, dm: DataMap, system_name: str, state_engine: Engine, hash_key: bytes
) -> int:
    """Erase every consumer of `engine` matching a tombstone of its tenant; returns how many."""
    system = dm.systems[system_name]
    stones = state.tombstone_hashes(state_engine, system_name)
    if not stones:
        return 0
    sql = MappedSql(engine, system)
    doomed: set[str] = set()
    tenant_of: dict[str, str] = {}  # consumer key -> tenant, both as text
    with engine.connect() as conn:
        consumer = sql.owned(system.consumer_table)
        for cid, tenant in conn.execute(sa.select(consumer.consumer_key, consumer.tenant)):
            kind = IdentityType.record_id.value
            tenant_of[str(cid)] = key_text(tenant)
            if (key_text(tenant), kind, tombstone_hash(hash_key, kind, key_text(cid))) in stones:
                doomed.add(str(cid))
        for tname, cname, kind in identity_columns(system):
            owned = sql.owned(tname)
            col = owned.table.c[cname]
            stmt = sa.select(owned.consumer_key, owned.tenant, col).select_from(owned.from_clause)
            for cid, tenant, value in conn.execute(stmt.where(col.is_not(None))):
                norm = str(value).strip()
                norm = norm.lower() if kind is IdentityType.email else norm
                stone = (key_text(tenant), kind.value, tombstone_hash(hash_key, kind.value, norm))
                if stone in stones:
                    doomed.add(str(cid))
    if doomed:
        # Holds in the restored registry still apply (R19): a consumer held whole is not erased,
        # a scoped hold keeps its tables (the rest is erased, as the request did).
        active = holds.active_holds(engine, system, datetime.now(UTC))
        whole, held = holds.held_for_consumers(
            dm, system_name, active, {c: tenant_of.get(c, "") for c in doomed}
        )
        doomed -= whole
        erase_sql.execute_erasure(engine, system, doomed, hash_key, held=held or None)
    return len(doomed)


def _load(s3: Any, bucket: str, key: str, engine: Engine, table: sa.Table) -> int:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with GZIP.GzipFile(fileobj=body) as gz:
        reader = csv.reader(io.TextIOWrapper(gz, encoding="utf-8", newline=""))
        header = next(reader, None)
        if header is None:
            return 0
        convert = [_converter(table.c[name].type) for name in header]
        n = 0
        for chunk in _chunks(reader):
            rows = [
                {name: conv(v) for name, conv, v in zip(header, convert, row, strict=True)}
                for row in chunk
            ]
            with engine.begin() as conn:
                conn.execute(sa.insert(table), rows)
            n += len(rows)
    return n


def _chunks(reader: Iterator[list[str]]) -> Iterator[list[list[str]]]:
    chunk: list[list[str]] = []
    for row in reader:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _converter(kind: Any):
    """Parse PostgreSQL COPY CSV text forms back into Python values ("" is NULL)."""
    if isinstance(kind, sa.Boolean):
        return lambda v: None if v == "" else v in ("t", "true", "True", "1")
    if isinstance(kind, sa.DateTime):
        return lambda v: None if v == "" else datetime.fromisoformat(v)
    if isinstance(kind, sa.Date):
        return lambda v: None if v == "" else date.fromisoformat(v)
    if isinstance(kind, sa.Integer):
        return lambda v: None if v == "" else int(v)
    if isinstance(kind, sa.Float | sa.Numeric):
        return lambda v: None if v == "" else float(v)
    return lambda v: None if v == "" else v
