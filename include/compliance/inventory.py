"""Holding the data map against the live systems: existence, drift, and counts per category.

A data map is only useful while it is true. This compares it with the databases and buckets it
describes, flags what looks personal but is not mapped (drift: a new column, log field or prefix
nobody classified), and counts records per category per client, the figures R8/R27 disclosures and
retention planning rest on. Counting is one GROUP BY per table in the database.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import ipaddress
import json
import re
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import phonenumbers
import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import BackupStore, DataMap, LogStore, RecordingStore
from compliance.core.datamap.validate import check_against_schema, live_schema
from compliance.core.outputs import ensure_workspace, put_bytes, put_json, put_summary
from compliance.core.sqlmap import MappedSql
from compliance.core.stores.s3 import list_keys, list_prefixes, open_gzip_lines

# Names that suggest personal information. Deliberately broad: a false alarm costs a line in
# `ignore`, a miss costs an unmapped category.
PERSONAL_HINTS = re.compile(
    r"(e_?mail|phone|mobile|name|addr|street|zip|postal|city|birth|dob|ssn|social|licen[cs]e|"
    r"passport|account|iban|card|token|ip(_|$)|^ip|user_?agent|^ua$|device|geo|lat|lon|"
    r"location|gender|race|religion|health|medical|salary|password|secret|answer|voice|"
    r"recording|rcpt|recipient|contact|customer|person|ssn)",
    re.IGNORECASE,
)
TECHNICAL = {"created_at", "updated_at", "deleted_at", "id"}
SAMPLE_OBJECTS = 3  # log objects sampled for drift per store: the first listed and the newest
# Identity-looking values (drift, issue 14): an e-mail address, a phone number, an IP address.
_EMAIL = re.compile(r"[^@\s\"'<>(),;:\[\]]+@[^@\s\"'<>(),;:\[\]]+\.[^@\s\"'<>(),;:\[\].]{2,}")
_PHONE_SHAPE = re.compile(r"\+?[0-9(][0-9 ().-]{5,22}[0-9]")
_PHONE_SEPARATOR = re.compile(r"[ ().-]")
OWN_TABLE_PREFIX = "cj_"  # this project's own tables (e.g. retention aggregates): counts only


class InventoryProblem(RuntimeError):
    """The data map does not match the systems: the inventory run fails so someone looks."""

    reason = "datamap_mismatch"


@dataclass
class Finding:
    where: str
    kind: str
    detail: str


@dataclass
class SystemInventory:
    name: str
    kind: str
    problems: list[Finding] = field(default_factory=list)
    drift: list[Finding] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)  # rows per mapped table
    per_client_category: list[dict[str, Any]] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    partitions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def looks_personal(name: str) -> bool:
    return name.lower() not in TECHNICAL and bool(PERSONAL_HINTS.search(name))


def inspect_sql_system(engine: Engine, dm: DataMap, system_name: str) -> SystemInventory:
    system = dm.systems[system_name]
    live = live_schema(engine)  # table -> {column: type}: the schema check checks types too
    inv = SystemInventory(system_name, "sql")
    inv.problems = [
        Finding(i.location, i.rule, i.message) for i in check_against_schema(dm, system_name, live)
    ]
    for tname, cols in sorted(live.items()):
        spec = system.tables.get(tname)
        if spec is None:
            if tname in system.ignore or tname.startswith(OWN_TABLE_PREFIX):
                continue
            personal = [c for c in cols if looks_personal(c)]
            if personal:
                inv.drift.append(
                    Finding(
                        f"{system_name}.{tname}",
                        "unmapped-table",
                        f"not in the data map; columns that look personal: {', '.join(personal)}",
                    )
                )
            continue
        known = {*spec.key_columns, *spec.columns}
        known |= {spec.time_column} if spec.time_column else set()
        known |= {spec.tenant_column} if spec.tenant_column else set()
        known |= {spec.relation.column} if spec.relation else set()
        for col in cols:
            if col not in known and looks_personal(col):
                inv.drift.append(
                    Finding(
                        f"{system_name}.{tname}.{col}",
                        "unmapped-column",
                        "looks personal but has no category in the data map",
                    )
                )
    present = {t for t in system.tables if t in live}
    sql = MappedSql(engine, system, present)
    counts: dict[tuple[Any, str], int] = defaultdict(int)
    with engine.connect() as conn:
        for tname in sorted(present):
            owned = sql.owned(tname)
            stmt = (
                sa.select(owned.tenant.label("client_id"), sa.func.count().label("n"))
                .select_from(owned.from_clause)
                .group_by(owned.tenant)
            )
            categories = {
                c.value for col in system.tables[tname].columns.values() for c in col.categories
            }
            total = 0
            for client_id, n in conn.execute(stmt):
                total += n
                for cat in categories:
                    counts[(client_id, cat)] += n
            inv.tables[tname] = total
    inv.per_client_category = [
        {"client_id": client, "category": cat, "records": n}
        for (client, cat), n in sorted(counts.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
    ]
    return inv


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


def identity_kind(value: str) -> str | None:
    """What `value` looks like if it looks like an identity: "an e-mail address", "a phone
    number" (E.164, or a national form with separators) or "an IP address"; else None.

    Deliberately about the whole value, not text containing one: drift is a value standing where
    the data map does not look, which a request's identity would then never find.
    """
    text = value.strip()
    if not 3 <= len(text) <= 254:
        return None
    if _EMAIL.fullmatch(text):
        return "an e-mail address"
    if (":" in text or text.count(".") == 3) and _ip(text):
        return "an IP address"
    if _PHONE_SHAPE.fullmatch(text) and (text[0] == "+" or _PHONE_SEPARATOR.search(text)):
        try:
            number = phonenumbers.parse(text, None if text[0] == "+" else "US")
        except phonenumbers.NumberParseException:
            return None
        if phonenumbers.is_possible_number(number):
            return "a phone number"
    return None


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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


def _declared_columns(dm: DataMap, system_name: str) -> dict[str, set[str]]:
    """Per mapped table, every column the map names: keys, time, tenant, relation, PI columns,
    and a recordings store's key column."""
    system = dm.systems[system_name]
    declared: dict[str, set[str]] = {}
    for tname, spec in system.tables.items():
        cols = {*spec.key_columns, *spec.columns}
        cols |= {c for c in (spec.time_column, spec.tenant_column) if c}
        cols |= {spec.relation.column} if spec.relation else set()
        declared[tname] = cols
    for store in dm.stores.values():
        if isinstance(store, RecordingStore) and store.system == system_name:
            declared.setdefault(store.table, set()).add(store.key_column)
    return declared


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
    declared = _declared_columns(dm, store.system)
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


def summarise(day: str, findings: list[dict[str, Any]]) -> dict[str, Any]:
    systems = [f for f in findings if f["kind"] == "sql"]
    stores = [f for f in findings if f["kind"] != "sql"]
    everything = findings
    return {
        "date": day,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "problems": sum(len(s["problems"]) for s in everything),
        "drift": sum(len(s["drift"]) for s in everything),
        "systems": systems,
        "stores": stores,
    }


def write_report(s3: Any, bucket: str, day: str, findings: list[dict]) -> dict[str, Any]:
    """Upload `inventory/<day>/inventory.{json,html}`; return a small summary for XCom."""
    report = summarise(day, findings)
    base = f"inventory/{day}/"
    ensure_workspace(s3, bucket)
    put_json(s3, bucket, base + "inventory.json", report)
    page = render_html(report).encode()
    uri = put_bytes(s3, bucket, base + "inventory.html", page, "text/html; charset=utf-8")
    summary = {"date": day, "problems": report["problems"], "drift": report["drift"], "report": uri}
    put_summary(s3, bucket, "data_inventory", summary)
    return summary


def raise_on_problems(summary: dict[str, Any]) -> None:
    if summary["problems"]:
        raise InventoryProblem(
            f"{summary['problems']} mismatch(es) between the data map and the systems; "
            f"see {summary['report']}"
        )


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Data inventory "
        f"{esc(report['date'])}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        ".bad{color:#b00}</style></head><body>",
        f"<h1>Data inventory {esc(report['date'])}</h1>",
        f"<p>{report['problems']} problem(s), {report['drift']} drift finding(s).</p>",
    ]
    for item in report["systems"] + report["stores"]:
        parts.append(f"<h2>{esc(item['name'])} <small>({esc(item['kind'])})</small></h2>")
        for label, key in (("Problems", "problems"), ("Drift", "drift")):
            if item[key]:
                rows = "".join(
                    f"<tr><td>{esc(f['where'])}</td><td>{esc(f['kind'])}</td>"
                    f"<td>{esc(f['detail'])}</td></tr>"
                    for f in item[key]
                )
                parts.append(f"<h3 class='bad'>{label}</h3><table>{rows}</table>")
        if item["tables"]:
            rows = "".join(
                f"<tr><td>{esc(t)}</td><td>{n}</td></tr>" for t, n in item["tables"].items()
            )
            parts.append(
                f"<h3>Rows per table</h3><table><tr><th>table</th><th>rows</th></tr>{rows}</table>"
            )
        if item["per_client_category"]:
            rows = "".join(
                f"<tr><td>{esc(str(r['client_id']))}</td><td>{esc(r['category'])}</td>"
                f"<td>{r['records']}</td></tr>"
                for r in item["per_client_category"]
            )
            parts.append(
                "<h3>Records per client and category</h3><table><tr><th>client</th>"
                f"<th>category</th><th>records</th></tr>{rows}</table>"
            )
        if item["objects"]:
            parts.append(
                f"<p>{item['objects']} object(s), {item['bytes']} bytes, "
                f"{item['partitions']} partition(s).</p>"
            )
    parts.append("</body></html>")
    return "".join(parts)
