"""One object store against its data map: log fields seen at unmapped paths, backup CSV columns
that hold identities, prefixes nobody mapped. Samples a few objects; findings name the place,
never the value."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import defaultdict, deque
from datetime import datetime
from typing import Any

from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import BackupStore, DataMap, LogStore, RecordingStore
from compliance.core.stores.s3 import list_keys, list_prefixes, open_gzip_lines
from compliance.inventory.findings import (
    OWN_TABLE_PREFIX,
    SAMPLE_OBJECTS,
    Finding,
    SystemInventory,
    declared_columns,
    identity_kind,
    looks_personal,
)


def inspect_object_store(
    s3: Any, dm: DataMap, store_name: str, sample_lines: int = 200
) -> SystemInventory:
    store = dm.stores[store_name]
    inv = SystemInventory(store_name, store.kind)
    try:
        s3.head_bucket(Bucket=store.bucket)
    except Exception:
        inv.problems.append(
            Finding(
                f"stores.{store_name}.bucket",
                "missing-bucket",
                f"bucket {store.bucket!r} does not exist or is not readable",
            )
        )
        return inv
    prefix = getattr(store, "prefix", "")
    first_key = None
    newest: deque[str] = deque(maxlen=SAMPLE_OBJECTS - 1)
    for obj in list_keys(s3, store.bucket, prefix):
        inv.objects += 1
        inv.bytes += int(obj["Size"])
        first_key = first_key or obj["Key"]
        newest.append(obj["Key"])
    if isinstance(store, LogStore):
        inv.partitions = _count_partitions(s3, store)
        if first_key is not None:
            sample = list(dict.fromkeys([first_key, *newest]))  # the oldest and the newest
            inv.drift.extend(_log_field_drift(s3, store_name, store, sample, sample_lines))
    elif isinstance(store, BackupStore):
        inv.partitions = len(list_prefixes(s3, store.bucket, store.prefix))
        inv.drift.extend(_backup_drift(s3, dm, store_name, store, sample_lines))
    if inv.objects == 0 and not isinstance(store, RecordingStore):
        inv.problems.append(
            Finding(
                f"stores.{store_name}.prefix",
                "empty-prefix",
                f"no objects under s3://{store.bucket}/{prefix}",
            )
        )
    inv.drift.extend(_unmapped_prefixes(s3, dm, store_name))
    return inv


def _count_partitions(s3: Any, store: LogStore) -> int:
    depth = store.partition.count("/")
    level = [store.prefix]
    for _ in range(depth):
        level = [p for parent in level for p in list_prefixes(s3, store.bucket, parent)]
    return len(level)


def _under(steps: tuple[Any, ...], mapped: list[tuple[Any, ...]]) -> bool:
    """At a mapped path, at an element of an array there, or inside a mapped value."""
    return any(steps[: len(m)] == m for m in mapped)


def _log_field_drift(
    s3: Any, name: str, store: LogStore, keys: list[str], limit: int
) -> list[Finding]:
    """Drift of a log store's lines against its mapped paths, from up to `limit` lines of each
    sampled object: mapped paths holding nothing (`unseen-path`: a renamed or moved field is
    searched in vain), identity-looking values at unmapped paths at any depth
    (`unmapped-identity`: erasure and access never look there), and personal-looking top-level
    keys (`unmapped-field`). Findings name the store, the path and an object key, never a value.
    """
    mapped = {fname: fpaths.parse(fname) for fname in store.fields}
    special = [fpaths.parse(store.tenant_field), fpaths.parse(store.timestamp_field)]
    covered = [p.steps for p in (*mapped.values(), *special)]
    top: set[str] = set()
    unseen = set(mapped)
    found: dict[tuple[str, str], list[Any]] = {}  # (path, looks like) -> [first key, count]
    lines = 0
    for key in keys:
        for i, raw in enumerate(open_gzip_lines(s3, store.bucket, key)):
            if i >= limit:
                break
            try:
                record = json.loads(raw, object_pairs_hook=list)
            except (ValueError, RecursionError):
                continue
            if not isinstance(record, list) or (record and not isinstance(record[0], tuple)):
                continue  # not a JSON object
            lines += 1
            top.update(k for k, _ in record)
            for fname in [f for f in unseen if _holds(record, mapped[f])]:
                unseen.discard(fname)
            for steps, value in fpaths.walk_scalars(record):
                if not isinstance(value, str) or _under(steps, covered):
                    continue
                kind = identity_kind(value)
                if kind is not None:
                    found.setdefault((fpaths.render(steps), kind), [key, 0])[1] += 1
    drift: list[Finding] = []
    sampled = ", ".join(keys)
    for fname in sorted(unseen) if lines else ():
        drift.append(
            Finding(
                f"{name}.{fname}",
                "unseen-path",
                f"mapped path holds no value in {lines} line(s) sampled from s3://{store.bucket}/"
                f" ({sampled}): if the field was renamed or moved, nothing is matched there",
            )
        )
    for (path, kind), (key, count) in sorted(found.items()):
        drift.append(
            Finding(
                f"{name}.{path}",
                "unmapped-identity",
                f"{count} sampled value(s) at this unmapped path look like {kind} (e.g. in "
                f"s3://{store.bucket}/{key}): erasure and access reports never search it",
            )
        )
    known_top = {str(steps[0]) for steps in covered}
    drift += [
        Finding(f"{name}.{fname}", "unmapped-field", "log field looks personal but is not mapped")
        for fname in sorted(top - known_top)
        if looks_personal(fname)
    ]
    return drift


def _holds(record: Any, path: fpaths.FieldPath) -> bool:
    return any(node is not None for node in fpaths.nodes(record, path))


def _backup_drift(s3: Any, dm: DataMap, name: str, store: BackupStore, limit: int) -> list[Finding]:
    """Identity-looking values in the newest snapshot's CSV files (`<prefix>YYYY-MM-DD/<table>
    .csv.gz`), up to `limit` rows each, in columns the system's mapping does not declare, or in
    tables it neither maps nor ignores: a restore would bring them back, and no tombstone or
    erasure would know them (R18). Findings name the store, table, column and object key."""
    system = dm.systems.get(store.system)
    if system is None:
        return []
    days = [p for p in list_prefixes(s3, store.bucket, store.prefix) if _is_day(p, store.prefix)]
    if not days:
        return []
    newest = max(days)
    declared = declared_columns(dm, store.system)
    drift: list[Finding] = []
    for obj in list_keys(s3, store.bucket, newest):
        key = obj["Key"]
        table = key[len(newest) :].removesuffix(".csv.gz")
        if not key.endswith(".csv.gz") or "/" in table:
            continue
        if table in system.ignore or table.startswith(OWN_TABLE_PREFIX):
            continue
        known = declared.get(table)
        counts, rows = _csv_identities(s3, store.bucket, key, known or set(), limit)
        where = (
            f"a column the data map does not declare for systems.{store.system}.tables.{table}"
            if known is not None
            else f"table {table!r}, which systems.{store.system} neither maps nor ignores"
        )
        for (column, kind), n in sorted(counts.items()):
            drift.append(
                Finding(
                    f"{name}.{table}.{column}",
                    "unmapped-identity",
                    f"{n} of {rows} sampled row(s) hold what looks like {kind}, in {where} "
                    f"(s3://{store.bucket}/{key})",
                )
            )
    return drift


def _is_day(prefix: str, base: str) -> bool:
    try:
        datetime.strptime(prefix[len(base) :], "%Y-%m-%d/")
    except ValueError:
        return False
    return True


def _csv_identities(
    s3: Any, bucket: str, key: str, known: set[str], limit: int
) -> tuple[dict[tuple[str, str], int], int]:
    """({(column, looks like): rows}, rows read) over the first `limit` rows of a CSV object."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    rows = 0
    with gzip.GzipFile(fileobj=body, mode="rb") as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", errors="replace", newline="")
        reader = csv.reader(text)
        header = next(reader, None) or []
        unknown = [(i, col) for i, col in enumerate(header) if col not in known]
        for row in reader:
            if rows >= limit or not unknown:
                break
            rows += 1
            for i, col in unknown:
                if i < len(row) and (kind := identity_kind(row[i])) is not None:
                    counts[(col, kind)] += 1
    return dict(counts), rows


def _unmapped_prefixes(s3: Any, dm: DataMap, store_name: str) -> list[Finding]:
    """Top-level prefixes of this store's bucket that no store maps (reported once per bucket)."""
    store = dm.stores[store_name]
    same_bucket = sorted(n for n, s in dm.stores.items() if s.bucket == store.bucket)
    if same_bucket[0] != store_name:
        return []
    mapped = [getattr(s, "prefix", "") for s in dm.stores.values() if s.bucket == store.bucket]
    if "" in mapped:
        return []
    return [
        Finding(
            f"s3://{store.bucket}/{top}", "unmapped-prefix", "objects here are not in the data map"
        )
        for top in list_prefixes(s3, store.bucket, "")
        if not any(top.startswith(m) or m.startswith(top) for m in mapped)
    ]
