"""Gathering a batch's data: one pass per SQL system and per log day, one part each in S3.

`gather_system` runs one SELECT per mapped table (and chunk of consumer ids) for *every* consumer
of the batch, joined toward the consumer along the data map's relations (`compliance.core.sqlmap`),
and
keeps only rows of the request's own tenant inside the request's window. `gather_log_shard` scans
one day folder with the shared log engine (`logs.collect_shard`) for the union window, then keeps
each line only inside its own request's window. Rows and lines go to *parts*, one per system and log
day for the whole batch, under `batches/<id>/parts/` in the workspace bucket (encrypted), each
line a request's ref and a JSON record; XCom carries counts only. Backup snapshots are
searched the same way, one snapshot day per shard (`gather_backups`, R13); `read_parts` merges
their records across days (`snapshots.merge_snapshot_records`).

R10 at the source: a column or field the data map marks `withhold` is never selected. The
database answers only whether a value is held, so an SSN, a password hash or a voiceprint never
leaves the store, not even into a part. G2: when a batch holds a request of a jurisdiction that
shows some of those kinds (the GDPR: government ids, account numbers), the rows' values of those
kinds are read too and written to that request's part alone (`r10.disclosed_row`); a log
line's withheld paths stay withheld for every jurisdiction, since a line can concern several
people and the value cannot be attributed (Art. 15(4)).

What is disclosed: mapped columns (the data map is the declaration of personal information; an
unmapped column is drift the inventory reports), plus each row's id and collection time. For log
lines, every field but the tenant field: the line is a record about the consumer, and its
unmapped fields (service, path, message) say what happened.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.access import r10
from compliance.access.batch import AccessBatch, load
from compliance.access.snapshots import merge_snapshot_records
from compliance.core import logfiles as logs
from compliance.core import workspace_layout
from compliance.core.context import Workspace
from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import DataMap, LogStore, RecordingStore, SqlSystem, Withhold
from compliance.core.datamap.validate import TimeColumnTypeError, type_family
from compliance.core.logfiles.identity_index import LogIndex
from compliance.core.outputs import THREADS, put_bytes
from compliance.core.shards import LogShard
from compliance.core.sqlmap import MappedSql, key_text, record_id, typed_values
from compliance.core.stores.s3 import list_keys

CHUNK = 500


def parts_prefix(batch_id: str) -> str:
    return workspace_layout.parts_prefix(batch_id)


def part_key(batch_id: str, name: str) -> str:
    return f"{parts_prefix(batch_id)}{name}.jsonl"


def put_part(s3: Any, bucket: str, batch_id: str, name: str, out: dict[str, list[bytes]]) -> None:
    """One object per system or log day for the whole batch, each line `<ref>\t<record>`: a
    batch costs one write per source and one read per source when bundles are built, not one
    per request and source. A rerun replaces it whole."""
    if out:
        body = b"".join(
            ref.encode() + b"\t" + line for ref, lines in sorted(out.items()) for line in lines
        )
        put_bytes(s3, bucket, part_key(batch_id, name), body, _NDJSON)


def json_value(value: Any) -> Any:
    """A stored value as JSON: datetimes as ISO 8601 UTC (the CRM stores naive UTC)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat() + "Z"
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return str(value)


def _naive(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment is not None else None


def _inside(moment: date | None, since: datetime | None, until: datetime | None) -> bool:
    """Inside [since, until]; a record without a time is kept (err toward disclosing, R9). A
    DATE column's day is inside when it is one of the window's (UTC) days."""
    if moment is None:
        return True
    if not isinstance(moment, datetime):
        return (since is None or moment >= since.astimezone(UTC).date()) and (
            until is None or moment <= until.astimezone(UTC).date()
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (since is None or moment >= since) and (until is None or moment <= until)


def _held(col: sa.ColumnElement) -> sa.ColumnElement:
    """1 when a value is held, else 0: the only thing the database returns for a withheld column."""
    return sa.case(
        (col.is_(None), 0),
        (sa.cast(col, sa.String) == "", 0),
        else_=1,
    )


def gather_system(
    ws: Workspace,
    dm: DataMap,
    engine: Engine,
    batch_id: str,
    system: str,
    *,
    datamap_hash: str | None = None,
) -> dict[str, Any]:
    """Every mapped table's rows owned by the batch's consumers, per request, into parts.

    `datamap_hash`: the map the caller reads with; a batch planned under another is refused
    (`MapChanged`), since the targets name tables and columns of the map they were planned on."""
    s3, bucket = ws.s3, ws.bucket
    batch = load(ws, batch_id, datamap_hash)
    spec = dm.systems[system]
    per_ref = batch.consumers.get(system, {})
    # R5: a request verified only for categories has no consumers in the batch; skipped here
    # too, so no row is ever read for it whatever the targets say.
    owners = {ref: [str(c) for c in per_ref.get(ref, [])] for ref in batch.gather_refs}
    audio_keys = {
        s.table: s.key_column
        for s in dm.stores.values()
        if isinstance(s, RecordingStore) and s.system == system
    }
    out: dict[str, list[bytes]] = defaultdict(list)
    for ref, tname, row in owned_rows(engine, spec, batch, owners, audio_keys):
        out[ref].append(record_line(f"{system}.{tname}", row))
    put_part(s3, bucket, batch_id, f"sql-{system}", out)
    return {
        "system": system,
        "rows": sum(len(v) for v in out.values()),
        "requests_with_rows": len(out),
    }


def owned_rows(
    engine: Engine,
    spec: SqlSystem,
    batch: AccessBatch,
    owners: dict[str, list[str]],
    audio_keys: dict[str, str] | None = None,
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(ref, table, row) of every mapped table's rows owned by `owners` (ref -> consumer keys
    as text), each kept only in its request's tenant and window. One SELECT per table and chunk
    of consumers for the whole batch; the live system and a loaded backup snapshot alike
    (`gather_backups`)."""
    by_consumer: dict[str, list[str]] = defaultdict(list)
    for ref, cids in owners.items():
        for cid in cids:
            by_consumer[cid].append(ref)
    ids = sorted(by_consumer, key=str)
    if not ids:
        return
    sql = MappedSql(engine, spec)
    since, until = batch.union_window()
    shown = {ref: r10.shown_kinds(batch.requests[ref]["jurisdiction"]) for ref in owners}
    disclose = frozenset().union(*shown.values())  # G2: empty for a CCPA-only batch
    with engine.connect() as conn:
        for tname, table in spec.tables.items():
            rows = _table_rows(
                conn, sql, tname, table, ids, since, until, audio_keys or {}, disclose
            )
            for row in rows:
                for ref in by_consumer.get(str(row["consumer"]), []):
                    req = batch.requests[ref]
                    r_since, r_until = batch.window(ref)
                    if row["tenant"] != str(req["client_id"]):  # both text (key_text)
                        continue  # never another tenant's row, whatever the join says
                    if not _inside(row["time"], r_since, r_until):
                        continue
                    yield ref, tname, r10.disclosed_row(row, shown[ref])


_NDJSON = "application/x-ndjson"


def _table_rows(
    conn: sa.Connection,
    sql: MappedSql,
    tname: str,
    table: Any,
    ids: list[Any],
    since: datetime | None,
    until: datetime | None,
    audio_keys: dict[str, str],
    disclose: frozenset[Withhold] = frozenset(),
) -> list[dict[str, Any]]:
    """`disclose`: `withhold` kinds whose values are read as well, for the requests of a
    jurisdiction that shows them (G2); `r10.disclosed_row` gives each request only its own."""
    owned = sql.owned(tname)
    t = owned.table
    plain = [c for c, col in table.columns.items() if col.withhold is None]
    withheld = [c for c, col in table.columns.items() if col.withhold is not None]
    time_col = _checked_time(tname, owned.time)
    cols: list[sa.ColumnElement] = [
        *(t.c[k].label(f"_pk{j}") for j, k in enumerate(table.key_columns)),
        (time_col if time_col is not None else sa.null()).label("_time"),
        owned.consumer_key.label("_consumer"),
        owned.tenant.label("_tenant"),  # the raw column: text in Python (key_text), no cast
    ]
    cols += [t.c[c].label(f"v{i}") for i, c in enumerate(plain)]
    cols += [_held(t.c[c]).label(f"w{i}") for i, c in enumerate(withheld)]
    shown = [c for c in withheld if table.columns[c].withhold in disclose]
    cols += [t.c[c].label(f"d{i}") for i, c in enumerate(shown)]
    key_col = audio_keys.get(tname)
    if key_col is not None:
        cols.append(t.c[key_col].label("_object"))
    found: list[dict[str, Any]] = []
    keys = typed_values(owned.consumer_key, [key_text(x) for x in ids])  # the column's own type
    for i in range(0, len(keys), CHUNK):
        stmt = (
            sa.select(*cols)
            .select_from(owned.from_clause)
            .where(owned.consumer_key.in_(keys[i : i + CHUNK]))
            .order_by(*(t.c[k] for k in table.key_columns))
        )
        if time_col is not None:  # undated tables: every row is in scope (R9, err to disclose)
            stmt = _within(stmt, time_col, since, until)
        for m in conn.execute(stmt).mappings():
            found.append(
                {
                    "record": record_id([m[f"_pk{j}"] for j in range(len(table.key_columns))]),
                    "time": m["_time"],
                    "consumer": m["_consumer"],
                    "tenant": key_text(m["_tenant"]),
                    "values": {c: m[f"v{i}"] for i, c in enumerate(plain)},
                    "withheld": [c for i, c in enumerate(withheld) if m[f"w{i}"]],
                    "disclosable": {
                        c: (table.columns[c].withhold, m[f"d{i}"]) for i, c in enumerate(shown)
                    },
                    "object": m["_object"] if key_col is not None else None,
                }
            )
    return found


def _checked_time(tname: str, when: sa.ColumnElement | None) -> Any:
    """The row's time expression (own or a dated parent's), refused unless it is a DATE or
    TIMESTAMP column: comparing an INTEGER or TEXT column with a datetime silently drops rows on
    SQLite and fails on PostgreSQL. `datamap check --db` reports it as `live-column-type`."""
    if when is None:
        return None
    if type_family(when.type) != "datetime":
        owner = getattr(getattr(when, "table", None), "name", tname)
        raise TimeColumnTypeError(
            f"time column {owner}.{when.name} (dating table "
            f"{tname!r}) is {when.type!r}, not a DATE or TIMESTAMP type: fix the data map or the "
            "column (`python -m compliance datamap check --db`: live-column-type)"
        )
    return when


def _within(
    stmt: sa.Select, when: Any, since: datetime | None, until: datetime | None
) -> sa.Select:
    """The union window on the database side; each request's own is applied per row. A DATE
    column is compared with dates (SQLite keeps dates as text, where '2024-01-01' sorts before
    '2024-01-01 00:00:00' and the first day would be lost)."""
    is_date = isinstance(when.type, sa.Date) and not isinstance(when.type, sa.DateTime)
    if since is not None:
        lo = since.astimezone(UTC).date() if is_date else _naive(since)
        stmt = stmt.where(sa.or_(when.is_(None), when >= lo))
    if until is not None:
        hi = until.astimezone(UTC).date() if is_date else _naive(until)
        stmt = stmt.where(sa.or_(when.is_(None), when <= hi))
    return stmt


def record_line(source: str, row: dict[str, Any], snapshot: str | None = None) -> bytes:
    """One gathered row as a part line's record; `snapshot`: the backup day it was found in."""
    record: dict[str, Any] = {
        "source": source,
        "record": json_value(row["record"]),
        "collected_at": json_value(row["time"]),
        "values": {k: json_value(v) for k, v in row["values"].items()},
        "withheld": row["withheld"],
    }
    if row["object"]:
        record["object"] = str(row["object"])  # internal: never a file name in the bundle
    if snapshot is not None:
        record["snapshot"] = snapshot  # merged across days by read_parts (R13)
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def gather_log_shard(
    ws: Workspace,
    dm: DataMap,
    store_s3: Any,
    batch_id: str,
    shard: LogShard,
    *,
    datamap_hash: str | None = None,
    index: LogIndex | None = None,
) -> dict[str, Any]:
    """One day folder of one log store: each request's lines inside its window, into parts.

    With `index` (the deployment's log identity index, issue 19), objects whose current sidecar
    holds none of the batch's identity values are not read; objects without one are read in
    full, so the lines found are the same either way (R10)."""
    store_name, prefix = shard.store, shard.prefix
    store = dm.stores[store_name]
    if not isinstance(store, LogStore):
        raise ValueError(f"{store_name} is not a log store")
    batch = load(ws, batch_id, datamap_hash)
    since, until = batch.union_window()
    out: dict[str, list[bytes]] = defaultdict(list)
    withheld = [name for name, f in store.fields.items() if f.withhold is not None]
    targets = batch.log_targets()
    listed = list(list_keys(store_s3, store.bucket, prefix))
    objects = listed if index is None else index.objects_to_read(store, listed, targets)
    for ref, line in logs.collect_shard(
        store_s3, store, prefix, targets, since=since, until=until, objects=objects
    ):
        if ref not in batch.requests or batch.categories_only(ref):
            continue  # R5: no log line is kept for a categories-only request
        # the scanner's own parser, so "inside the window" means the same thing in both places
        moment = logs.timestamp(fpaths.first(line, store.timestamp_field))
        if not _inside(moment, *batch.window(ref)):
            continue
        tenant = fpaths.first(line, store.tenant_field)
        if str(tenant) != str(batch.requests[ref]["client_id"]):
            continue  # the scanner matched on this tenant; checked again, cheaply
        out[ref].append(_log_line(store_name, store, line, moment, withheld))
    name = f"log-{store_name}-{hashlib.sha256(prefix.encode()).hexdigest()[:16]}"
    put_part(ws.s3, ws.bucket, batch_id, name, out)
    return {
        "store": store_name,
        "shard": prefix,
        "lines": sum(len(v) for v in out.values()),
        "requests_with_lines": len(out),
        "objects": len(listed),
        "objects_read": len(objects),
    }


def _log_line(
    store_name: str,
    store: LogStore,
    line: dict[str, Any],
    moment: datetime | None,
    withheld: list[str],
) -> bytes:
    """The line as an access record. `line` is this record's own copy: it is edited in place.

    R10 at any depth: every value at a `withhold` path (`actor.ssn`, `cards[].number`) is
    removed from the line, which only names the path as held. The tenant is the business, not
    the consumer; a readable timestamp becomes collected_at. Everything else stays as logged.
    """
    held = sorted(path for path in withheld if fpaths.remove(line, path))
    fpaths.remove(line, store.tenant_field)
    if moment:
        fpaths.remove(line, store.timestamp_field)
    values = line
    record = {
        "source": store_name,
        "record": None,
        "collected_at": json_value(moment) if moment else None,
        "values": values,
        "withheld": held,
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def read_parts(s3: Any, bucket: str, batch_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every record gathered for the batch, per request (all systems and log days), each
    request's in a stable order: parts by name, lines as written."""
    keys = sorted(o["Key"] for o in list_keys(s3, bucket, parts_prefix(batch_id)))
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        bodies = pool.map(lambda k: s3.get_object(Bucket=bucket, Key=k)["Body"].read(), keys)
        records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for body in bodies:
            for line in body.splitlines():
                if line.strip():
                    ref, _, record = line.partition(b"\t")
                    records[ref.decode()].append(json.loads(record))
    return {ref: merge_snapshot_records(recs) for ref, recs in records.items()}
