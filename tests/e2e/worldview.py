"""Snapshots of a whole world, for "everything else is byte-identical" assertions.

Rows are keyed by (table, primary key) with a digest of the row; log lines by (bucket, key, line
number) with the exact bytes; other objects by (bucket, key) with a digest of their bytes.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa


@dataclass
class Snapshot:
    rows: dict[tuple[str, Any], str] = field(default_factory=dict)
    lines: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    objects: dict[tuple[str, str], str] = field(default_factory=dict)


def db_rows(url: str) -> dict[tuple[str, Any], str]:
    engine = sa.create_engine(url)
    md = sa.MetaData()
    md.reflect(engine)
    out: dict[tuple[str, Any], str] = {}
    with engine.connect() as conn:
        for table in md.sorted_tables:
            if table.name.startswith("cj_"):
                continue
            pk = list(table.primary_key.columns)
            cols = list(table.columns)
            for row in conn.execute(sa.select(*cols)):
                m = row._mapping
                key = tuple(m[c.name] for c in pk) if pk else tuple(m.values())
                out[(table.name, key)] = hashlib.sha256(repr(tuple(row)).encode()).hexdigest()
    engine.dispose()
    return out


def take(url: str, s3: Any, log_buckets: set[str], object_buckets: set[str]) -> Snapshot:
    snap = Snapshot(rows=db_rows(url))
    for bucket in log_buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                snap.lines[(bucket, obj["Key"])] = gzip.decompress(body).splitlines(keepends=True)
    for bucket in object_buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                snap.objects[(bucket, obj["Key"])] = hashlib.sha256(body).hexdigest()
    return snap
