"""The residue oracle in rewritten backups (`rewrite: true`): the snapshots after the rewrite,
every version, searched without the rewrite's code (R16.1, R18).

For each snapshot day, the current version of every mapped table's CSV is read with Python's own
`csv` module into a throw-away SQLite database of text columns, and the SQL oracle
(`sql_search.verify_system`: LIKE on every text column within the request's tenant, then the
consumers' keys where rows must be gone, then short contact ids) runs on it, with every table
treated as erased whole: a rewrite removes the consumers' rows from every mapped table, `keep`
and `mask` tables too, so none of them is skipped here. A mapped table missing from a day, or an
object that does not parse, makes the day unverifiable (reported, and the run fails). Every
*non-current* version under the store's prefix is searched as raw bytes (the log oracle's
search), without tenant relief: after a rewrite no old version should remain at all.

A consumer a legal hold keeps rows of (R19) is left whole in the snapshots until the hold ends
(`deletion.backup_rewrite`): the values of requests kept in part are not searched here (they
stand on the held consumer's rows), and the held consumers' keys are not residue; the keys of
such a request's other consumers are checked like any other.
"""

from __future__ import annotations

import csv
import gzip
import io
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from compliance.core.datamap.model import BackupStore, SqlSystem, TableErase
from compliance.core.stores.sql import scratch_engine
from compliance.deletion.residue_oracle.log_search import _Needles, search_object
from compliance.deletion.residue_oracle.sql_search import verify_system
from compliance.deletion.residue_oracle.values import TargetsLike, Verdict, wanted_values

SUFFIX = ".csv.gz"


class _Unheld:
    """The batch's targets less the requests a legal hold keeps in part (module docstring)."""

    def __init__(self, targets: TargetsLike) -> None:
        self._t = targets
        self.requests = targets.requests
        self.consumers = targets.consumers
        self.given = targets.given
        self.identities = targets.identities
        self._partial = set(getattr(targets, "partial", {}) or {})

    def active_refs(self) -> list[str]:
        return [r for r in self._t.active_refs() if r not in self._partial]


def verify_backup_store(
    s3: Any,
    name: str,
    store: BackupStore,
    system: SqlSystem,
    system_name: str,
    targets: TargetsLike,
    verdict: Verdict,
) -> None:
    """Search every day of a rewritten store; counts go to `verdict.backups[name]`."""
    scope = _Unheld(targets)
    values = wanted_values(scope)
    held = set((getattr(targets, "held", {}) or {}).get(system_name, {}))
    consumers: dict[str, set[str]] = defaultdict(set)
    for ref in targets.active_refs():  # keys: every erased consumer but those a hold keeps
        tenant = str(targets.requests[ref]["client_id"])
        mine = {str(c) for c in targets.consumers.get(system_name, {}).get(ref, [])}
        consumers[tenant] |= mine - held
    counts = {"days": 0, "objects": 0, "versions": 0, "noncurrent": 0, "bytes": 0}
    verdict.backups[name] = counts
    current: dict[str, dict[str, str]] = defaultdict(dict)  # day prefix -> table -> key
    needles = _Needles(values)
    pages = s3.get_paginator("list_object_versions").paginate(
        Bucket=store.bucket, Prefix=store.prefix
    )
    for page in pages:
        for v in page.get("Versions", []):
            key = v["Key"]
            counts["versions"] += 1
            if v["IsLatest"]:
                head, _, file = key.rpartition("/")
                if file.endswith(SUFFIX) and file[: -len(SUFFIX)] in system.tables:
                    current[head + "/"][file[: -len(SUFFIX)]] = key
                    counts["objects"] += 1
                continue
            counts["noncurrent"] += 1
            body = s3.get_object(Bucket=store.bucket, Key=key, VersionId=v["VersionId"])["Body"]
            try:
                hits, size = search_object(body, needles, "")
            except (OSError, EOFError, ValueError):
                verdict.unreadable.append(f"{name}:{key}")
                continue
            counts["bytes"] += size
            if hits:
                verdict.residue[f"{name}:{key} (old version)"] += hits
    everything = _erased_whole(system)
    for day, tables in sorted(current.items()):
        counts["days"] += 1
        missing = sorted(set(system.tables) - set(tables))
        if missing:
            verdict.unreadable.append(f"{name}:{day} (no snapshot of {', '.join(missing)})")
            continue
        with tempfile.TemporaryDirectory(prefix="cj-oracle-") as tmp:
            engine = scratch_engine(Path(tmp) / "day.db")
            try:
                for table, key in sorted(tables.items()):
                    body = s3.get_object(Bucket=store.bucket, Key=key)["Body"]
                    counts["bytes"] += _load(engine, table, body)
                scratch = Verdict()
                verify_system(engine, system_name, everything, values, consumers, scratch)
            finally:
                engine.dispose()
        for place, n in scratch.residue.items():
            table = place.split(":", 1)[1].split(".", 1)[0]
            verdict.residue[f"{name}:{tables.get(table, day + table + SUFFIX)}"] += n
        verdict.unreadable += [f"{name}:{day}{u}" for u in scratch.unreadable]


def _erased_whole(system: SqlSystem) -> SqlSystem:
    """The system as a rewrite treats it: every mapped table's rows removed, none kept."""
    tables = {
        t: spec.model_copy(update={"erase": TableErase.delete}) for t, spec in system.tables.items()
    }
    return system.model_copy(update={"tables": tables})


def _load(engine: sa.Engine, table: str, body: Any) -> int:
    """The gzip CSV `body` (a stream: a snapshot can be gigabytes) as a table of text columns,
    "" as NULL (COPY's NULL); returns the decompressed bytes read."""
    with gzip.GzipFile(fileobj=body, mode="rb") as gz:
        rows = csv.reader(io.TextIOWrapper(gz, encoding="utf-8", newline=""))
        header = next(rows, None) or []
        md = sa.MetaData()
        t = sa.Table(table, md, *(sa.Column(c, sa.Text) for c in header))
        md.create_all(engine)
        with engine.begin() as conn:
            batch = []
            for row in rows:
                batch.append(
                    {c: (v if v != "" else None) for c, v in zip(header, row, strict=False)}
                )
                if len(batch) >= 5000:
                    conn.execute(sa.insert(t), batch)
                    batch = []
            if batch:
                conn.execute(sa.insert(t), batch)
        return gz.tell()
