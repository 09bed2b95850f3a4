"""The R13 backup search loads only the batch's subset of a snapshot (issue 19) and finds
exactly what loading the whole snapshot finds: the part `gather_backup_shard` writes is
byte-identical either way, on a seeded snapshot of the demo map with several tenants, a
consumer known only to the snapshot (found through an alias row, so the consumer table is
streamed a second time for it), one found through the consumer table's own e-mail, a same
e-mail in another tenant, child rows in tables without a tenant column (attachments, ticket
comments), and a message whose contact row is missing from the snapshot.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from compliance.access import gather_backups, snapshots
from compliance.access.batch import AccessBatch, targets_key
from compliance.access.gather import parts_prefix
from compliance.core import csv_records, snapshot_subset
from compliance.core.context import Workspace
from compliance.core.datamap.validate import check_text, load_datamap
from compliance.core.outputs import put_json
from compliance.core.settings import REPO_ROOT
from compliance.core.shards import LogShard
from compliance.core.stores.s3 import ensure_bucket

DEMO = REPO_ROOT / "config" / "datamap.yaml"
WORK = "cj-snapshot-subset-ws"
DAY = "2026-11-20"
NOW = datetime(2026, 11, 21, tzinfo=UTC)
INTEGER = {"contact_id", "client_id", "message_id", "ticket_id", "duration_s", "amount_cents"}


def _kind(table: Any, name: str) -> str:
    if name in table.key_columns or name in INTEGER:
        return "integer"
    if name == table.time_column:
        return "timestamp"
    if name in ("is_child", "parental_consent"):
        return "boolean"
    return "date" if name == "birth_date" else "text"


class World:
    """A seeded snapshot of the demo CRM: `tables` are rows as CSV text, per mapped table."""

    def __init__(self, system: Any, seed: int) -> None:
        self.system = system
        self.rng = random.Random(seed)
        self.columns = snapshots.needed_columns(system)
        self.tables: dict[str, list[dict[str, str]]] = {t: [] for t in system.tables}
        self.next_id = 1000

    def add(self, tname: str, **given: Any) -> str:
        table = self.system.tables[tname]
        self.next_id += 1
        row: dict[str, str] = {}
        for name in self.columns[tname]:
            kind = _kind(table, name)
            if name in table.key_columns:
                value: Any = self.next_id
            elif kind == "timestamp":
                value = (NOW - timedelta(days=self.rng.randint(1, 700))).strftime(
                    "%Y-%m-%d %H:%M:%S.%f"
                )
            elif kind == "boolean":
                value = self.rng.choice("tf")
            elif kind == "date":
                value = f"19{self.rng.randint(50, 99)}-0{self.rng.randint(1, 9)}-1{self.rng.randint(0, 9)}"
            elif kind == "integer":
                value = self.rng.randint(1, 999)
            else:
                n = self.rng.randint(1000, 1200)  # often some row's key: false leads
                value = self.rng.choice(
                    ["", f"{name}-{n}", f'say "{n}",\n{n},\n"{n}"', f"{n}\n,{n}", f" {n} "]
                )
            row[name] = str(given.pop(name, value))
        assert not given, given
        self.tables[tname].append(row)
        return row[table.key_columns[0]]

    def person(self, tenant: int, email: str, *, alias: str | None = None) -> str:
        """A contact with a row in every table (two messages with attachments, a ticket with
        comments, an alias): every relation and both tenant-less tables."""
        cid = self.add("contacts", client_id=tenant, email=email)
        self.children(tenant, cid)
        if alias is not None:
            self.add("contact_aliases", client_id=tenant, contact_id=cid, email=alias)
        return cid

    def children(self, tenant: int, cid: str) -> None:
        for tname, table in self.system.tables.items():
            rel = table.relation
            if rel is None or rel.target_table != "contacts" or tname == "contact_aliases":
                continue
            for _ in range(2):
                key = self.add(tname, client_id=tenant, contact_id=cid)
                for child, spec in self.system.tables.items():
                    if spec.relation is not None and spec.relation.target_table == tname:
                        self.add(child, **{spec.relation.column: key})

    def upload(self, s3: Any, bucket: str, prefix: str) -> None:
        ensure_bucket(s3, bucket)
        for tname, rows in self.tables.items():
            header = [*self.columns[tname], "unmapped_note"]
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(header)
            rows = list(rows)
            self.rng.shuffle(rows)  # a child may come before or after its parent in the file
            writer.writerows([[r.get(c, "x") for c in header] for r in rows])
            key = f"{prefix}{DAY}/{tname}.csv.gz"
            s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(buf.getvalue().encode()))

    def live(self, url: str) -> sa.Engine:
        """The live system's schema (types only: the loader reflects it, R13 reads no row)."""
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            for tname, names in self.columns.items():
                table = self.system.tables[tname]
                cols = ", ".join(f"{c} {_kind(table, c)}" for c in names)
                conn.exec_driver_sql(f"create table {tname} ({cols})")
        return engine


def _world(s3: Any, tmp_path: Any, seed: int) -> tuple[Any, Any, sa.Engine, dict[str, str]]:
    dm = load_datamap(DEMO)
    store, system = dm.stores["crm_backups"], dm.systems["crm"]
    world = World(system, seed)
    people = {
        "planned": world.person(1, "ann@example.com"),
        "alias_only": world.person(2, "old@example.com", alias="Bo.Alias@Example.com"),
        "email_only": world.person(2, "CARL@example.com"),
        "other_tenant_same_email": world.person(3, "ann@example.com"),
        "planned_tenant_2": world.person(2, "dee@example.com"),
    }
    for tenant in (1, 2, 3):  # bystanders
        for i in range(25):
            world.person(tenant, f"p{tenant}-{i}@example.com", alias=f"a{tenant}-{i}@example.com")
    gone = "99999"  # a planned consumer whose contact row is not in the snapshot
    world.children(1, gone)
    people["gone"] = gone
    world.upload(s3, store.bucket, store.prefix)
    return dm, store, world.live(f"sqlite:///{tmp_path}/live.db"), people


def _batch(ws: Workspace, people: dict[str, str]) -> str:
    window = {"until": NOW.isoformat(), "jurisdiction": "ccpa"}
    batch = AccessBatch(
        "acc-subset",
        NOW.isoformat(),
        requests={
            "1": {"client_id": 1, "since": (NOW - timedelta(days=365)).isoformat(), **window},
            "2": {"client_id": 2, "since": None, **window},
            "3": {"client_id": 2, "since": None, **window},
        },
        given={
            "1": {"email": ["ann@example.com"]},
            "2": {"email": ["bo.alias@example.com"], "phone": ["+15550000000"]},
            "3": {"email": ["carl@example.com", "dee@example.com"]},
        },
        consumers={
            "crm": {
                "1": [people["planned"], people["gone"]],
                "2": [],
                "3": [people["planned_tenant_2"]],
            }
        },
    )
    put_json(ws.s3, ws.bucket, targets_key(batch.batch_id), batch.__dict__)
    return batch.batch_id


def _gather(ws: Workspace, dm: Any, live: sa.Engine, batch_id: str) -> tuple[dict, bytes]:
    store = dm.stores["crm_backups"]
    shard = LogShard("crm_backups", f"{store.prefix}{DAY}/")
    result = gather_backups.gather_backup_shard(ws, dm, ws.s3, live, batch_id, shard)
    keys = [
        o["Key"]
        for o in ws.s3.list_objects_v2(Bucket=WORK, Prefix=parts_prefix(batch_id))["Contents"]
    ]
    assert len(keys) == 1
    return result, ws.s3.get_object(Bucket=WORK, Key=keys[0])["Body"].read()


@pytest.mark.parametrize("seed", [3, 11])
def test_the_subset_finds_byte_for_byte_what_the_whole_snapshot_finds(
    s3: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    dm, _, live, people = _world(s3, tmp_path, seed)
    ensure_bucket(s3, WORK)
    ws = Workspace(s3, WORK)
    batch_id = _batch(ws, people)

    subset, new = _gather(ws, dm, live, batch_id)
    with monkeypatch.context() as m:  # the path before issue 19: the batch's tenants, whole
        m.setattr(gather_backups, "wanted_for", lambda *_a: None)
        whole, old = _gather(ws, dm, live, batch_id)

    assert new == old
    assert subset["rows"] == whole["rows"] > 0
    assert subset["rows_loaded"] * 10 < whole["rows_loaded"]  # the batch, not the snapshot
    lines = new.decode().splitlines()
    by_ref: dict[str, set[str]] = {}
    for line in lines:
        ref, record = line.split("\t", 1)
        by_ref.setdefault(ref, set()).add(yaml.safe_load(record)["source"])
    tenantless = {"crm_backups.message_attachments", "crm_backups.ticket_comments"}
    assert tenantless <= by_ref["2"]  # the alias-only consumer's children, no tenant column
    assert tenantless <= by_ref["3"]
    assert "crm_backups.contacts" in by_ref["2"]  # its contact row: the second stream
    assert "crm_backups.messages" in by_ref["1"]  # incl. the contact missing from the snapshot


def test_an_identity_two_hops_down_loads_the_whole_snapshot() -> None:
    doc = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    doc["systems"]["crm"]["tables"]["ticket_comments"]["columns"]["author"]["identity"] = "email"
    dm, issues = check_text(yaml.safe_dump(doc, sort_keys=False))
    assert dm is not None, issues
    assert snapshot_subset.plan(dm.systems["crm"]) is None
    assert snapshot_subset.plan(load_datamap(DEMO).systems["crm"]) is not None


def test_lenient_keys_never_separate_what_sqlite_finds_equal() -> None:
    key = snapshot_subset.lenient_key
    assert key("0042") == key("42") == key(" 42") == "42"
    assert key("6F1C0A52-0000-4000-8000-000000000001") == "6f1c0a52-0000-4000-8000-000000000001"
    assert key("") is None and key(None) is None
    assert key("Abc") == key("abc") and key("1") != key("2")


def test_identity_spellings_never_separate_what_sqlite_finds_equal() -> None:
    """SQLite is the oracle: a given identity bound as text against an INTEGER column (as
    `resolve` compares) and against a TEXT one under NOCASE; whatever it finds equal, the
    subset's spelling and its block search must keep."""
    given = ["0123", "123", "+123", "-0042", " 77 ", "Ann@X.com", "+15550000000"]
    stored = [123, "123", "0123", -42, 77, "ann@x.com ", "ANN@x.com", 15550000000, "+15550000000"]
    db = sa.create_engine("sqlite://")
    with db.begin() as conn:
        conn.exec_driver_sql("create table t (n integer, s text collate nocase)")
        for v in stored:
            conn.execute(sa.text("insert into t values (:v, :v)"), {"v": v})
        pairs = {
            (g, str(v))
            for g in given
            for col in ("n", "s")
            for (v,) in conn.execute(
                sa.text(f"select {col} from t where {col} = trim(:g)"), {"g": g}
            )
        }
    assert ("0123", "123") in pairs and ("-0042", "-42") in pairs  # the oracle can see both
    text = snapshot_subset.identity_text
    for g, v in pairs:
        assert text(g) == text(v), (g, v)
        needles = snapshot_subset.needle_pattern((), [text(g)])
        assert needles is not None and needles.find(f"9,{v.lower()},x\n"), (g, v)
    assert text("ann@x.com") != text("bob@x.com") and text("12") != text("123")
    # digits to str.isdigit but not to int(): text, never a crash on a snapshot's cell
    assert text("²") == "²" and snapshot_subset.lenient_key("-²") == "-²"
    huge = "0" + "7" * 5000  # past int()'s 4,300 digits
    assert text(huge) == snapshot_subset.lenient_key(huge) == "7" * 5000
    for spelt in ("0", "-0", "+0042", "-0042", "-7", "00", "123"):  # as int() spells them
        assert text(spelt) == snapshot_subset.lenient_key(spelt) == str(int(spelt)), spelt


@pytest.mark.parametrize("seed", range(4))
def test_candidate_rows_are_real_rows_and_miss_none_that_could_be_kept(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block scanner against `csv` itself: quoted commas, quotes and newlines, keys spelt
    with zeros, signs, blanks and quotes, UUIDs in capitals, non-ASCII text, blocks cut
    mid-record; both the automaton and the word-by-word search. Each row's offset is where its
    record starts in the UTF-8 bytes past the header (the rewrite drops records by it)."""
    rng = random.Random(seed)
    lo = 1000 * (seed % 2)  # odd seeds: few long keys, searched by `str.find`; even: the automaton
    monkeypatch.setattr(csv_records, "BLOCK", rng.choice([7, 64, 301]))
    uid = "6f1c0a52-0000-4000-8000-0000000000{:02d}"
    fields = [
        lambda: str(rng.randint(lo, lo + 60)),
        lambda: rng.choice(["0", "+", "-", " ", ""]) + str(rng.randint(lo, lo + 60)),
        lambda: uid.format(rng.randint(0, 20)).upper(),
        lambda: rng.choice(
            ["", "plain", 'q"uo"te', "a,b", "line\nbreak", "x\r\ny", "Ann@X.com ", "Zoë"]
        ),
        lambda: f'{rng.randint(lo, lo + 60)}\n"{rng.randint(lo, lo + 60)}",',
    ]
    rows = [[rng.choice(fields)() for _ in range(5)] for _ in range(300)]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["a", "b", "c", "d", "e"], *rows])
    keys = {snapshot_subset.lenient_key(str(k)) for k in rng.sample(range(lo, lo + 61), 5)}
    keys |= {uid.format(3), uid.format(7)}
    pattern = snapshot_subset.needle_pattern(keys, ["ann@x.com"])
    assert pattern is not None and bool(pattern.words) == bool(seed % 2)
    text = io.StringIO(buf.getvalue(), newline="")
    header, rest = csv_records.read_header(text)
    assert header == ["a", "b", "c", "d", "e"]
    placed = list(csv_records.candidates(text, pattern, rest))
    body = buf.getvalue().encode()[len(b"a,b,c,d,e\n") :]
    for at, row in placed:  # the offset names the row's own record
        assert next(csv.reader(io.StringIO(body[at:].decode(), newline=""))) == row
    found = [row for _, row in placed]
    wanted = [
        r
        for r in rows
        if any(snapshot_subset.lenient_key(v) in keys for v in r)
        or any(snapshot_subset.identity_text(v) == "ann@x.com" for v in r)
    ]
    assert wanted  # the seed leaves something to find
    it = iter(rows)
    assert all(any(c == r for r in it) for c in found)  # real rows, in file order
    assert all(w in found for w in wanted)
