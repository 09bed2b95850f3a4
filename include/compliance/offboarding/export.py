"""The return export: all of one ended client's data, handed back (G4 Art. 28(3)(g)).

One zip per client and run at `offboarding/<client>/<run_id>/export.zip` in the workspace
bucket, encrypted at rest (`outputs.encryption_args`: KMS when configured, else SSE-S3), with
an expiring GET link beside it (`link.json`, at most 7 days, R12) for the client to collect.

Contents, machine-readable (Art. 20's spirit, Art. 28(3)(g)'s letter: *all* the data):

- `tables/<system>.<table>.csv` and `.json`: every mapped table filtered by the client's
  tenant (through the tenant column or up the relations), every column, in key order;
- `logs/<store>.jsonl`: the log lines whose tenant field is the client, as stored;
- `recordings/<store>/<object key>`: the audio objects the client's rows point at;
- `manifest.json`: what each file holds (rows, lines, bytes, sha256) and the rules applied.

Withholding (R10) is the consumer-facing rule of access reports; this goes back to the
controller, whose data it is, so nothing is withheld. Receipts and the ledger see counts only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
import zipfile
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from compliance.access.deliver import link_lifetime, presign
from compliance.access.gather import json_value
from compliance.core.context import JobContext
from compliance.core.datamap.model import LogStore, RecordingStore
from compliance.core.outputs import encryption_args, put_json
from compliance.core.sqlmap import MappedSql
from compliance.offboarding import logs, scope

SCHEMA = "compliance-jobs/return-export/1"
SPOOL = 32 << 20  # the zip moves to disk beyond this


def export_key(client: str, run_id: str) -> str:
    return f"{scope.EXPORTS}{client}/{run_id}/export.zip"


def link_key(client: str, run_id: str) -> str:
    return f"{scope.EXPORTS}{client}/{run_id}/link.json"


class _Member:
    """A zip member written as a stream, hashed and counted on the way."""

    def __init__(self, zf: zipfile.ZipFile, name: str, when: datetime) -> None:
        info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        self.name, self.sha, self.size = name, hashlib.sha256(), 0
        self.out = zf.open(info, "w")

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)

    def close(self, **facts: Any) -> dict[str, Any]:
        self.out.close()
        return {"file": self.name, "bytes": self.size, "sha256": self.sha.hexdigest(), **facts}


def _tables(ctx: JobContext, zf: zipfile.ZipFile, client: str, when: datetime) -> list[dict]:
    files = []
    for sname, system in sorted(ctx.datamap.systems.items()):
        engine = ctx.engine(sname)
        sql = MappedSql(engine, system)
        for tname in sorted(system.tables):
            owned = sql.owned(tname)
            stmt = (
                sa.select(owned.table)
                .select_from(owned.from_clause)
                .where(scope.tenant_filter(owned.tenant, [client]))
                .order_by(*sql.key_columns(tname))
            )
            base = f"tables/{sname}.{tname}"
            files.append(_table_csv(engine, stmt, _Member(zf, f"{base}.csv", when)))
            files.append(_table_json(engine, stmt, _Member(zf, f"{base}.json", when)))
    return files


def _table_csv(engine: Any, stmt: sa.Select, member: _Member) -> dict[str, Any]:
    """The rows as CSV (a header, values as JSON would spell them, NULL as empty), streamed."""
    rows = 0
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(stmt)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(list(result.keys()))
        for row in result:
            writer.writerow(["" if v is None else json_value(v) for v in row])
            rows += 1
            if text.tell() > 1 << 20:
                member.write(text.getvalue().encode())
                text.seek(0)
                text.truncate()
        member.write(text.getvalue().encode())
    return member.close(rows=rows)


def _table_json(engine: Any, stmt: sa.Select, member: _Member) -> dict[str, Any]:
    """The rows as a JSON array of objects (column -> value), one row per line, streamed."""
    rows = 0
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(stmt)
        names = list(result.keys())
        member.write(b"[")
        for row in result:
            record = {n: json_value(v) for n, v in zip(names, row, strict=True)}
            member.write((b",\n" if rows else b"\n") + json.dumps(record, sort_keys=True).encode())
            rows += 1
        member.write(b"\n]\n")
    return member.close(rows=rows)


def _stores(ctx: JobContext, zf: zipfile.ZipFile, client: str, when: datetime) -> list[dict]:
    files = []
    for name, store in sorted(ctx.datamap.stores.items()):
        if isinstance(store, LogStore):
            member, lines = _Member(zf, f"logs/{name}.jsonl", when), 0
            for line in logs.client_lines(ctx.store(name), store, client):
                member.write(line)
                lines += 1
            files.append(member.close(lines=lines))
        elif isinstance(store, RecordingStore):
            system = ctx.datamap.systems[store.system]
            for key in scope.recording_keys(ctx.engine(store.system), system, store, client):
                body = ctx.store(name).get_object(Bucket=store.bucket, Key=key)["Body"]
                member = _Member(zf, f"recordings/{name}/{key}", when)
                while chunk := body.read(1 << 20):
                    member.write(chunk)
                files.append(member.close(object_key=key))
    return files


def build(
    ctx: JobContext, client: str, run_id: str, *, link_days: int | None = None
) -> dict[str, Any]:
    """Write the client's export and its link; what the receipt says about it (no link)."""
    lifetime = link_lifetime(link_days)
    now = ctx.now()
    ws = ctx.workspace
    key = export_key(client, run_id)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL) as spool:
        with zipfile.ZipFile(spool, "w") as zf:
            files = _tables(ctx, zf, client, now) + _stores(ctx, zf, client, now)
            manifest = {
                "schema": SCHEMA,
                "client_id": client,
                "generated_at": now.isoformat(),
                "rules": ["G4 Art. 28(3)(g)", "R27", "R12"],
                "files": files,
            }
            zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        size = spool.tell()
        spool.seek(0)
        digest = hashlib.sha256(spool.read()).hexdigest()
        spool.seek(0)
        ws.s3.put_object(
            Bucket=ws.bucket,
            Key=key,
            Body=spool,
            ContentType="application/zip",
            **encryption_args(ctx.settings.kms_key_id),
        )
    url = presign(ws.s3, ws.bucket, key, lifetime)
    expires = (now + lifetime).isoformat()
    put_json(ws.s3, ws.bucket, link_key(client, run_id), {"url": url, "expires_at": expires})
    return {
        "object": f"s3://{ws.bucket}/{key}",
        "bytes": size,
        "sha256": digest,
        "link_expires_at": expires,
        "files": len(files) + 1,
        "rows": sum(f.get("rows", 0) for f in files if f["file"].endswith(".csv")),
        "log_lines": sum(f.get("lines", 0) for f in files),
        "recordings": sum(1 for f in files if f["file"].startswith("recordings/")),
    }
