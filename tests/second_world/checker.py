"""An independent judge of erasure, access and retention on the second world.

It shares no code with include/compliance: it reads the database with plain SQLAlchemy
reflection, the objects with boto3 and gzip, the log lines with json and its own knowledge of the
two log shapes, and it takes "whose is this" from the generator's ground truth (`World`), never
from the data map or the product's matchers. Every verdict is a list of problems (empty: all
good), so one run reports everything that is wrong at once.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from .generate import (
    ACTIVITY,
    BACKUP_BUCKET,
    BACKUPS,
    DELIVERY,
    LOG_BUCKET,
    STORE_PREFIX,
    World,
    e164,
)

RowKey = tuple[str, tuple[str, ...]]
ObjKey = tuple[str, str]
BUCKETS = (LOG_BUCKET, BACKUP_BUCKET)
# The identity paths of each log store, as the checker itself reads them (not the data map's).
MAPPED = {
    ACTIVITY: [
        ("actor", "email"),
        ("actor", "uuid"),
        ("recipients", "[]", "email"),
        ("recipients", "[]", "name"),
        ("sms", "to"),
        ("meta.v2", "ip"),
        ("meta.v2", "agent"),
        ("payment", "iban"),
    ],
    DELIVERY: [("to", "[]"), ("sms", "to"), ("net", "remote_ip")],
}
# The retention policy's periods (tests/second_world/retention.yaml), read by a person.
RETENTION = {
    "minors": (60, "days"),
    "inactive": (2, "years"),
    "deals": (3, "years"),
    "deal_notes": (18, "months"),
    ACTIVITY: (30, "days"),
    DELIVERY: (30, "days"),
    BACKUPS: (35, "days"),
}


# -- snapshots ---------------------------------------------------------------------------------
@dataclass
class Snapshot:
    rows: dict[RowKey, tuple] = field(default_factory=dict)
    lines: dict[ObjKey, list[bytes]] = field(default_factory=dict)  # log objects, decompressed
    objects: dict[ObjKey, bytes] = field(default_factory=dict)  # every other object, raw bytes


def store_of(key: str) -> str | None:
    for store in (ACTIVITY, DELIVERY, BACKUPS):
        if key.startswith(STORE_PREFIX[store]):
            return store
    return None


def take(url: str, s3: Any) -> Snapshot:
    """Every row of every CRM table (as tuples), every log line, every other object's bytes."""
    snap = Snapshot()
    engine = sa.create_engine(url)
    md = sa.MetaData()
    md.reflect(engine)
    with engine.connect() as conn:
        for table in md.sorted_tables:
            if table.name.startswith("cj_"):
                continue
            pk = [c.name for c in table.primary_key.columns]
            for row in conn.execute(sa.select(table)):
                m = row._mapping
                key = tuple(str(m[c]) for c in pk) if pk else tuple(str(v) for v in row)
                snap.rows[(table.name, key)] = tuple(row)
    engine.dispose()
    for bucket in BUCKETS:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                if store_of(obj["Key"]) in (ACTIVITY, DELIVERY):
                    snap.lines[(bucket, obj["Key"])] = gzip.decompress(body).splitlines()
                else:
                    snap.objects[(bucket, obj["Key"])] = body
    return snap


# -- reading lines -----------------------------------------------------------------------------
def tenant_of(store: str, raw: bytes) -> str | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if store == ACTIVITY:
        org = rec.get("org")
        return str(org.get("code")) if isinstance(org, dict) else None
    return str(rec["tenant"]) if "tenant" in rec else None


def time_of(store: str, raw: bytes) -> datetime:
    rec = json.loads(raw)
    return parse_time(rec["ts" if store == ACTIVITY else "at"])


def parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _without_mapped(store: str, rec: Any) -> Any:
    """The record with every mapped path's value replaced by None (what redaction may touch)."""
    rec = json.loads(json.dumps(rec))
    for path in MAPPED[store]:
        _blank(rec, list(path))
    return _collapse(rec)


def _collapse(node: Any) -> Any:
    """A container left with blanks only counts as one blank (a redactor may blank it whole)."""
    if isinstance(node, dict):
        out = {k: _collapse(v) for k, v in node.items()}
        return None if out and all(v is None for v in out.values()) else out
    if isinstance(node, list):
        items = [_collapse(v) for v in node]
        return None if items and all(v is None for v in items) else items
    return node


def _blank(node: Any, path: list[str]) -> None:
    if not path:
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        if isinstance(node, list):
            for i, item in enumerate(node):
                if rest:
                    _blank(item, rest)
                else:
                    node[i] = None
        return
    if isinstance(node, dict) and head in node:
        if rest:
            if node[head] is None or isinstance(node[head], str):
                node[head] = None  # the whole container was redacted to a scalar
            else:
                _blank(node[head], rest)
        else:
            node[head] = None


def variants(world: World, persons: set[str]) -> dict[str, set[bytes]]:
    """Per tenant, every spelling of the persons' identity values a naive search looks for."""
    out: dict[str, set[bytes]] = {}
    for pid in persons:
        p = world.persons[pid]
        found = out.setdefault(p.org, set())
        found |= {e.lower().encode() for e in p.emails}
        for phone in p.stored_phones:
            digits = e164(phone)[2:]
            found |= {
                e164(phone).encode(),
                f"{digits[:3]}-{digits[3:6]}-{digits[6:]}".encode(),
                f"({digits[:3]}) {digits[3:6]}-{digits[6:]}".encode(),
                digits.encode(),
            }
        found.add(pid.lower().encode())
        found.add(p.ref_code.lower().encode())
    return out


def _hits(raw: bytes, values: set[bytes]) -> int:
    low = raw.lower()
    # JSON may escape non-ASCII: compare the decoded text too
    try:
        text = json.dumps(json.loads(raw), ensure_ascii=False).lower().encode()
    except ValueError:
        text = low
    return sum(1 for v in values if v in low or v in text)


# -- erasure -----------------------------------------------------------------------------------
def check_erasure(
    world: World,
    before: Snapshot,
    after: Snapshot,
    erased: set[str],
    extra_owners: dict[bytes, frozenset[str]] | None = None,
) -> list[str]:
    """Exactly the erased persons' rows and log lines are gone; everything else byte-identical.

    `erased` are person uuids that must be gone (held consumers and twins must not be in it);
    `extra_owners` gives the owners of lines a test planted after seeding.
    """
    problems: list[str] = []
    gone = {k for k in world.rows_of(erased) if k in before.rows}
    for key in sorted(gone & set(after.rows)):
        problems.append(f"row {key} of an erased person is still there")
    for key, values in sorted(before.rows.items()):
        if key in gone:
            continue
        if key not in after.rows:
            problems.append(f"row {key} (not a target) was deleted")
        elif after.rows[key] != values:
            problems.append(f"row {key} (not a target) was changed")
    for key in sorted(set(after.rows) - set(before.rows)):
        problems.append(f"row {key} appeared")
    problems += _check_log_erasure(world, before, after, erased, extra_owners or {})
    problems += _same_objects(before, after, set())
    problems += residue(world, after, erased)
    return problems


def _owners(world: World, extra: dict[bytes, frozenset[str]]) -> dict[bytes, frozenset[str]]:
    table = {line.raw: line.owners for line in world.lines}
    table.update(extra)
    return table


def _check_log_erasure(world, before, after, erased, extra) -> list[str]:
    problems: list[str] = []
    owners = _owners(world, extra)
    for (bucket, key), lines in sorted(before.lines.items()):
        store = store_of(key)
        targeted = [bool(owners.get(raw, frozenset()) & erased) for raw in lines]
        got = after.lines.get((bucket, key))
        if store == ACTIVITY:  # drop_line
            want = [raw for raw, hit in zip(lines, targeted, strict=True) if not hit]
            if got is None:
                if want:
                    problems.append(f"{key}: object gone with {len(want)} other line(s)")
                continue
            if got != want:
                left = sum(1 for raw in got if owners.get(raw, frozenset()) & erased)
                lost = sum(1 for raw in want if raw not in got)
                problems.append(
                    f"{key}: {left} target line(s) left, {lost} other line(s) lost or changed "
                    f"({len(got)} lines, {len(want)} expected)"
                )
            continue
        # redact: every line stays; target lines lose the identity values, nothing else changes
        if got is None or len(got) != len(lines):
            problems.append(f"{key}: redact store lost or gained lines")
            continue
        doomed = variants(world, erased)
        for i, (raw, hit, new) in enumerate(zip(lines, targeted, got, strict=True)):
            if not hit:
                if new != raw:
                    problems.append(f"{key} line {i}: not a target line, but changed")
                continue
            tenant = tenant_of(store, raw) or ""
            if _hits(new, doomed.get(tenant, set())):
                problems.append(f"{key} line {i}: a target identity is still in the line")
            try:
                same = _without_mapped(store, json.loads(new)) == _without_mapped(
                    store, json.loads(raw)
                )
            except ValueError:
                same = False
            if not same:
                problems.append(f"{key} line {i}: changed outside the mapped paths")
    for key in sorted(set(after.lines) - set(before.lines)):
        problems.append(f"log object {key} appeared")
    return problems


def _same_objects(before: Snapshot, after: Snapshot, allowed: set[ObjKey]) -> list[str]:
    problems = []
    for key, body in sorted(before.objects.items()):
        if key in allowed:
            continue
        if key not in after.objects:
            problems.append(f"object {key} vanished")
        elif after.objects[key] != body:
            problems.append(f"object {key} changed")
    for key in sorted(set(after.objects) - set(before.objects) - allowed):
        problems.append(f"object {key} appeared")
    return problems


def identical(before: Snapshot, after: Snapshot) -> list[str]:
    """Nothing changed at all (a dry run)."""
    problems = [
        f"row {k} changed or gone" for k, v in before.rows.items() if after.rows.get(k) != v
    ]
    problems += [f"row {k} appeared" for k in set(after.rows) - set(before.rows)]
    problems += [f"{k[1]} changed" for k, v in before.lines.items() if after.lines.get(k) != v]
    problems += [f"{k[1]} appeared" for k in set(after.lines) - set(before.lines)]
    return problems + _same_objects(before, after, set())


def residue(world: World, snap: Snapshot, erased: set[str]) -> list[str]:
    """A naive search: no spelling of an erased person's identities in any row or log line of
    their tenant (twins in other tenants are someone else)."""
    problems: list[str] = []
    doomed = variants(world, erased)
    if not doomed:
        return problems
    tenant_rows = {k: r.tenant for k, r in world.rows.items()}
    for key, values in snap.rows.items():
        tenant = tenant_rows.get(key)
        if tenant is None or tenant not in doomed:
            continue
        text = " ".join("" if v is None else str(v) for v in values).lower().encode()
        if any(v in text for v in doomed[tenant]):
            problems.append(f"residue: row {key} holds an erased identity")
    for (_, key), lines in snap.lines.items():
        store = store_of(key)
        n = sum(
            1 for raw in lines if (t := tenant_of(store, raw)) in doomed and _hits(raw, doomed[t])
        )
        if n:
            problems.append(f"residue: {n} line(s) of {key} hold an erased identity")
    return problems


# -- access ------------------------------------------------------------------------------------
def read_bundle(s3: Any, bucket: str, client: str, request_id: str) -> zipfile.ZipFile:
    raw = s3.get_object(Bucket=bucket, Key=f"access/{client}/{request_id}/bundle.zip")["Body"]
    return zipfile.ZipFile(io.BytesIO(raw.read()))


def _record_keys(record: Any) -> set[tuple[str, ...]]:
    """Every reasonable reading of a bundle record's key (one column, or a composite)."""
    if isinstance(record, list | tuple):
        return {tuple(str(x) for x in record)}
    if isinstance(record, dict):
        return {tuple(str(x) for x in record.values())}
    text = str(record)
    out = {(text,)}
    try:
        parsed = json.loads(text)
        if isinstance(parsed, list):
            out.add(tuple(str(x) for x in parsed))
    except ValueError:
        pass
    for sep in ("|", "/", ",", ":", " "):
        if sep in text:
            out.add(tuple(text.split(sep)))
    return out


def check_access(
    world: World,
    snap: Snapshot,
    zf: zipfile.ZipFile,
    person: str,
    since: datetime | None,
    until: datetime,
    jurisdiction: str = "ccpa",
) -> list[str]:
    """Every row and log line of the person in the window is in the bundle, nothing of anyone
    else's, and no R10 value anywhere in it.

    G2 (issue 16): a GDPR bundle shows the person's own national id (a row of theirs) and never
    a credential (portal digest, recovery answer); log lines' IBANs stay withheld (a line names
    several people).

    Rows of a table without a time column must be there when their nearest timed ancestor is in
    the window, and may be there otherwise (the product may treat them as always in scope).
    """
    problems: list[str] = []
    p = world.persons[person]
    data = json.loads(zf.read("data.json"))

    def inside(moment: datetime | None) -> bool:
        if moment is None:
            return True
        m = parse_time(moment)
        return (since is None or m >= since) and m <= until

    must, may = set(), set()
    for key in world.rows_of({person}):
        if key not in snap.rows:
            continue
        row = world.rows[key]
        if row.time is not None:
            (must if inside(row.time) else set()).add(key)
        elif inside(world.effective_time(row)):
            must.add(key)
        else:
            may.add(key)
    got: set[RowKey] = set()
    unknown = 0
    for source in data.get("sources", []):
        if source.get("kind") != "table":
            continue
        table = str(source["source"]).split(".")[-1]
        for rec in source.get("records", []):
            forms = _record_keys(rec.get("record"))
            match = [(table, f) for f in forms if (table, f) in world.rows]
            if match:
                got.add(match[0])
            else:
                unknown += 1
    if unknown:
        problems.append(f"{unknown} bundle record(s) are no row of the world")
    for key in sorted(must - got):
        problems.append(f"row {key} of the person is missing from the bundle")
    for key in sorted(got - must - may):
        owner = world.rows[key].owner
        why = "another person's" if owner != person else "outside the window"
        problems.append(f"row {key} in the bundle is {why}")

    want: Counter = Counter()
    owners = _owners(world, {})
    line_secrets = {ln.raw: ln.secrets for ln in world.lines}
    secrets = {s for s in p.secrets if s}
    kinds = set()  # the R10 kinds the bundle must name as withheld
    for (_, key), lines in snap.lines.items():
        store = store_of(key)
        for raw in lines:
            if person in owners.get(raw, frozenset()) and inside(time_of(store, raw)):
                want[(store, time_of(store, raw))] += 1
                secrets |= line_secrets.get(raw, frozenset())  # another actor's, too
                if line_secrets.get(raw):
                    kinds.add("financial_account")
    for key in must:
        if key[0] == "people" and p.national_id:
            kinds.add("government_id")
        if key[0] == "portal_logins":
            kinds |= {"password", "security_answer"}
    if jurisdiction == "gdpr":
        own = {p.national_id} if p.national_id and ("people", (person,)) in must else set()
        secrets -= own
        kinds.discard("government_id")
        body = zf.read("data.json")
        if not all(v.encode() in body for v in own):
            problems.append("G2: the person's own national id is not shown")
    named = {w.get("kind") for w in data.get("withheld", [])}
    if not kinds <= named:
        problems.append(f"R10: withheld kinds {sorted(named)} do not name {sorted(kinds - named)}")
    have: Counter = Counter(
        (str(s["source"]).split(".")[-1], parse_time(r["collected_at"]))
        for s in data.get("sources", [])
        if s.get("kind") == "log"
        for r in s.get("records", [])
    )
    if have != want:
        missing = sum((want - have).values())
        extra = sum((have - want).values())
        problems.append(
            f"log lines: {missing} of the person's missing, {extra} not the person's "
            f"({sum(want.values())} expected)"
        )

    for member in zf.namelist():
        body = zf.read(member)
        leaked = [s for s in secrets if s.encode() in body]
        if leaked:
            problems.append(f"R10: {len(leaked)} withheld value(s) in {member}")
    return problems


# -- retention ---------------------------------------------------------------------------------
def _minus(as_of: date, amount: int, unit: str) -> date:
    if unit == "days":
        return as_of - timedelta(days=amount)
    months = amount * 12 if unit == "years" else amount
    y, m = divmod(as_of.year * 12 + as_of.month - 1 - months, 12)
    m += 1
    last = (date(y + (m == 12), m % 12 + 1, 1) - timedelta(days=1)).day
    return date(y, m, min(as_of.day, last))


def cutoff(as_of: date, rule: str) -> datetime:
    """Midnight of as_of minus the period: rows strictly before it are old."""
    return datetime.combine(_minus(as_of, *RETENTION[rule]), time())


_PARTITION = {
    ACTIVITY: re.compile(r"^activity/(\d{4})/(\d{2})/(\d{2})/"),
    DELIVERY: re.compile(r"^delivery/day=(\d{4})(\d{2})(\d{2})/"),
    BACKUPS: re.compile(r"^nightly/crm2/(\d{4})-(\d{2})-(\d{2})/"),
}


def partition_day(key: str) -> date | None:
    store = store_of(key)
    match = _PARTITION[store].match(key) if store else None
    return date(*map(int, match.groups())) if match else None


def expected_retention(world: World, before: Snapshot, as_of: date) -> set[RowKey]:
    """The rows the sweep must delete, from the ground truth's times and owners."""
    midnight = datetime.combine(as_of, time())
    held = {h.subject for h in world.active_holds(midnight) if h.scope == "all" and h.subject}
    held_orgs = {h.org for h in world.active_holds(midnight) if h.scope == "all" and not h.subject}
    present = {k: world.rows[k] for k in before.rows if k in world.rows}

    def protected(pid: str) -> bool:
        return pid in held or world.persons[pid].org in held_orgs

    gone: set[RowKey] = set()
    people = {r.owner for r in present.values()}
    for pid in people:
        if protected(pid):
            continue
        p = world.persons[pid]
        mine = [k for k, r in present.items() if r.owner == pid]
        if p.is_minor and p.signed_up < cutoff(as_of, "minors"):
            gone |= set(mine)
            continue
        last = max(present[k].time for k in mine if present[k].time is not None)
        if not p.is_minor and last < cutoff(as_of, "inactive"):
            gone |= set(mine)
    for key, row in present.items():
        if protected(row.owner):
            continue
        if row.table in ("deals", "deal_notes") and row.time < cutoff(as_of, row.table):
            gone.add(key)
    changed = True
    while changed:  # children go with their parent
        more = {k for k, r in present.items() if r.parent in gone and k not in gone}
        gone |= more
        changed = bool(more)
    return gone


def check_retention(world: World, before: Snapshot, after: Snapshot, as_of: date) -> list[str]:
    problems: list[str] = []
    gone = expected_retention(world, before, as_of)
    for key in sorted(gone & set(after.rows)):
        problems.append(f"row {key} is older than its period and still there")
    for key, values in sorted(before.rows.items()):
        if key in gone:
            continue
        if key not in after.rows:
            problems.append(f"row {key} was deleted but is young or held")
        elif after.rows[key] != values:
            problems.append(f"row {key} was changed")
    midnight = datetime.combine(as_of, time())
    holds = world.active_holds(midnight)
    for (bucket, key), lines in sorted(before.lines.items()):
        store = store_of(key)
        day = partition_day(key)
        got = after.lines.get((bucket, key))
        if day is None or day >= _minus(as_of, *RETENTION[store]):
            if got != lines:
                problems.append(f"{key}: young log object changed or gone")
            continue
        kept = {h.org for h in holds if h.scope in ("all", store)}
        want = [raw for raw in lines if tenant_of(store, raw) in kept]
        if not want and got is not None:
            problems.append(f"{key}: expired log object still there")
        elif want and got != want:
            problems.append(f"{key}: expired log object should keep exactly the held lines")
    allowed: set[ObjKey] = set()
    for (bucket, key), _ in before.objects.items():
        day = partition_day(key)
        old = store_of(key) == BACKUPS and day and day < _minus(as_of, *RETENTION[BACKUPS])
        if old and not any(h.scope in ("all", BACKUPS) for h in holds):
            allowed.add((bucket, key))
            if (bucket, key) in after.objects:
                problems.append(f"{key}: expired snapshot still there")
    problems += _same_objects(before, after, allowed)
    return problems
