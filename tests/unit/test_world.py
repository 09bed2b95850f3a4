"""The synthetic world: every planted case exists, objects are well formed, seeds reproduce.

The other jobs' tests trust the tiny world to hold the awkward cases (children, one person at
two clients, aliases, holds...), so each one is asserted here rather than assumed.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import wave
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import BackupStore, DataMap, LogStore, RecordingStore
from compliance.core.datamap.validate import load_datamap
from compliance.core.stores.s3 import list_keys
from compliance.core.stores.sql import engine_from_url
from compliance_dev.world import objects, schema
from compliance_dev.world.generate import Plan, WorldNotEmpty, seed_world

REPO = Path(__file__).resolve().parents[2]
AS_OF = date(2025, 6, 1)


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(REPO / "config" / "datamap.yaml")


def _stores(dm: DataMap, kind: type) -> dict[str, Any]:
    return {name: s for name, s in dm.stores.items() if isinstance(s, kind)}


def _scalar(conn: sa.Connection, sql: str) -> Any:
    return conn.execute(sa.text(sql)).scalar()


def _body(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_tiny_world_holds_every_planted_case(db_url: str, s3: Any, datamap: DataMap) -> None:
    engine = engine_from_url(db_url)
    summary = seed_world(engine, s3, datamap, "tiny", 7, AS_OF)
    with engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            rows = _scalar(conn, f"SELECT count(*) FROM {table.name}")
            assert rows > 0, table.name
            assert rows == summary.tables[table.name], table.name
        assert _scalar(conn, "SELECT count(*) FROM contacts") == Plan.for_scale("tiny").contacts
        assert _scalar(conn, "SELECT count(*) FROM clients WHERE NOT active") == 1
        assert _scalar(conn, "SELECT count(DISTINCT industry) FROM clients") >= 5
        # children under 13, with consent true, false and unknown (R24, R26)
        kids = conn.execute(
            sa.text("SELECT parental_consent, birth_date FROM contacts WHERE is_child")
        )
        kids = kids.all()
        assert {k.parental_consent for k in kids} == {True, False, None}
        assert all(date.fromisoformat(str(k.birth_date)) > date(2012, 6, 1) for k in kids)
        # one person, several identities
        same_client = """SELECT count(*) FROM (SELECT client_id, lower(email) AS e FROM contacts
            WHERE email IS NOT NULL GROUP BY client_id, lower(email)
            HAVING count(*) > 1 AND count(DISTINCT phone) > 1) x"""
        assert _scalar(conn, same_client) > 0
        two_clients = """SELECT count(*) FROM (SELECT lower(email) AS e FROM contacts
            WHERE email IS NOT NULL GROUP BY lower(email) HAVING count(DISTINCT client_id) > 1) x"""
        assert _scalar(conn, two_clients) > 0
        assert _scalar(conn, "SELECT count(*) FROM contacts WHERE email <> lower(email)") > 0
        assert _scalar(conn, "SELECT count(*) FROM contact_aliases WHERE email IS NOT NULL") > 0
        assert _scalar(conn, "SELECT count(*) FROM contact_aliases WHERE phone IS NOT NULL") > 0
        assert _scalar(conn, "SELECT count(*) FROM contacts WHERE phone NOT LIKE '+1%'") == 0
        # fields never to disclose (R10) are filled for some rows, not all
        for table, col in [
            ("contacts", "drivers_license"),
            ("payments", "bank_account"),
            ("call_recordings", "voiceprint"),
        ]:
            filled = _scalar(conn, f"SELECT count({col}) FROM {table}")
            assert 0 < filled < summary.tables[table], col
        # legal holds: live consumer hold, expired one, client-wide "all" (R19)
        holds = conn.execute(sa.text("SELECT * FROM legal_holds")).mappings().all()
        now = AS_OF.isoformat()
        assert any(h["contact_id"] and str(h["expires_at"]) > now for h in holds)
        assert any(
            h["contact_id"] and h["expires_at"] and str(h["expires_at"]) < now for h in holds
        )
        assert any(h["contact_id"] is None and h["scope"] == "all" for h in holds)
        assert {h["exception_code"] for h in holds} <= {
            "law_enforcement_hold",
            "legal_claims",
            "legal_obligation",
        }
        # history: three years, none of it after as_of
        oldest = str(_scalar(conn, "SELECT min(created_at) FROM contacts"))
        assert oldest < (AS_OF - timedelta(days=800)).isoformat()
        assert str(_scalar(conn, "SELECT max(occurred_at) FROM email_events")) < now
        keys = [r[0] for r in conn.execute(sa.text("SELECT s3_key FROM call_recordings"))]
        ids = {r[0] for r in conn.execute(sa.text("SELECT contact_id FROM contacts"))}
        emails = [r[0] for r in conn.execute(sa.text("SELECT email FROM contacts")) if r[0]]

    (recordings,) = _stores(datamap, RecordingStore).values()
    for key in keys:
        assert key.startswith("recordings/") and key.endswith(".wav")
        body = _body(s3, recordings.bucket, key)
        assert body[:4] == b"RIFF" and body[8:12] == b"WAVE" and len(body) < 2_000
        with wave.open(io.BytesIO(body)) as audio:
            assert audio.getnframes() > 0

    lines = _check_logs(s3, datamap, ids)
    assert lines == summary.log_lines
    _check_backups(s3, datamap, summary.tables, Plan.for_scale("tiny").backup_days)

    report = summary.report()
    assert not any(email in report for email in emails)  # counts only, no personal data
    with pytest.raises(WorldNotEmpty):
        seed_world(engine, s3, datamap, "tiny", 7, AS_OF)
    engine.dispose()


def _check_logs(s3: Any, dm: DataMap, contact_ids: set[int]) -> int:
    """Every log object: gzip JSON lines, compact, in its day's partition, sorted by time."""
    total = 0
    days = [AS_OF - timedelta(days=i) for i in range(Plan.for_scale("tiny").log_days, 0, -1)]
    for store in _stores(dm, LogStore).values():
        identities = {f.identity.value: n for n, f in store.fields.items() if f.identity}
        seen_ids: set[str] = set()
        system_lines = 0
        for day in days:
            key = f"{store.prefix}{day.strftime(store.partition)}part-00000.jsonl.gz"
            raw = gzip.decompress(_body(s3, store.bucket, key))
            assert raw.endswith(b"\n")
            stamps = []
            for line in raw.decode().splitlines():
                total += 1
                obj = json.loads(line)
                assert json.dumps(obj, separators=(",", ":")) == line
                stamp = obj[store.timestamp_field]
                assert stamp.startswith(day.isoformat() + "T") and stamp.endswith("Z")
                stamps.append(stamp)
                if store.tenant_field not in obj:
                    system_lines += 1
                    assert not set(identities.values()) & set(obj)
                    continue
                assert isinstance(obj[store.tenant_field], int)
                seen_ids |= {kind for kind, name in identities.items() if name in obj}
                if "record_id" in identities and identities["record_id"] in obj:
                    assert obj[identities["record_id"]] in contact_ids
            assert stamps == sorted(stamps)
        assert seen_ids == set(identities), store.prefix
        if "record_id" in identities:  # application logs also hold system lines
            assert system_lines > 0
    return total


def _check_backups(s3: Any, dm: DataMap, counts: dict[str, int], days: int) -> None:
    """A csv.gz per table per day; the newest holds every row, older ones are subsets."""
    (store,) = _stores(dm, BackupStore).values()
    dates = [AS_OF - timedelta(days=i) for i in range(days)]
    keys = {o["Key"] for o in list_keys(s3, store.bucket, store.prefix)}
    assert len(keys) == days * len(schema.metadata.tables)
    for table in schema.metadata.sorted_tables:
        previous = None
        for day in dates:
            key = f"{store.prefix}{day.isoformat()}/{table.name}.csv.gz"
            rows = list(
                csv.reader(io.StringIO(gzip.decompress(_body(s3, store.bucket, key)).decode()))
            )
            assert rows[0] == [c.name for c in table.columns]
            if day == AS_OF:
                assert len(rows) - 1 == counts[table.name]
            if previous is not None:
                assert len(rows) <= previous
            previous = len(rows)


def _checksums(url: str) -> dict[str, str]:
    engine = engine_from_url(url)
    out = {}
    with engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            pk = next(iter(table.primary_key.columns))
            rows = conn.execute(sa.select(table).order_by(pk)).all()
            out[table.name] = hashlib.sha256(repr(rows).encode()).hexdigest()
    engine.dispose()
    return out


def _objects(s3: Any, dm: DataMap) -> dict[tuple[str, str], str]:
    out = {}
    for name, store in dm.stores.items():
        prefix = "recordings/" if isinstance(store, RecordingStore) else store.prefix
        for obj in list_keys(s3, store.bucket, prefix):
            digest = hashlib.sha256(_body(s3, store.bucket, obj["Key"])).hexdigest()
            out[(name, obj["Key"])] = digest
    return out


def _renamed(dm: DataMap, suffix: str) -> DataMap:
    stores = {
        n: s.model_copy(update={"bucket": f"{s.bucket}-{suffix}"}) for n, s in dm.stores.items()
    }
    return dm.model_copy(update={"stores": stores})


def test_same_seed_same_world(tmp_path: Path, s3: Any, datamap: DataMap) -> None:
    worlds = []
    for suffix in ("a", "b"):
        url = f"sqlite:///{tmp_path / suffix}.db"
        dm = _renamed(datamap, suffix)
        engine = engine_from_url(url)
        seed_world(engine, s3, dm, "tiny", 11, AS_OF)
        engine.dispose()
        worlds.append((_checksums(url), _objects(s3, dm)))
    (rows_a, objects_a), (rows_b, objects_b) = worlds
    assert rows_a == rows_b
    assert objects_a == objects_b
    assert len(objects_a) > 50


def test_both_backends_write_the_same_objects(
    tmp_path: Path, pg_url: str, s3: Any, datamap: DataMap
) -> None:
    worlds = []
    for suffix, url in (("lite", f"sqlite:///{tmp_path / 'crm.db'}"), ("pg", pg_url)):
        dm = _renamed(datamap, suffix)
        engine = engine_from_url(url)
        seed_world(engine, s3, dm, "tiny", 5, AS_OF)
        engine.dispose()
        worlds.append((_checksums(url), _objects(s3, dm)))
    assert worlds[0] == worlds[1]


def test_replace_starts_over(tmp_path: Path, s3: Any, datamap: DataMap) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = engine_from_url(url)
    seed_world(engine, s3, datamap, 60, 1, AS_OF)
    first = _checksums(url)
    with pytest.raises(WorldNotEmpty, match="replace=True"):
        seed_world(engine, s3, datamap, 60, 2, AS_OF)
    summary = seed_world(engine, s3, datamap, 60, 2, AS_OF - timedelta(days=1), replace=True)
    assert _checksums(url) != first
    store = next(iter(_stores(datamap, BackupStore).values()))
    snapshots = {o["Key"].split("/")[1] for o in list_keys(s3, store.bucket, store.prefix)}
    assert max(snapshots) == (AS_OF - timedelta(days=1)).isoformat()  # no leftovers
    with engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM contacts") == summary.tables["contacts"] == 60
    engine.dispose()


def _population() -> objects.Population:
    return objects.Population(
        now=0,
        client_id=np.array([1, 2, 3]),
        created=np.array([0, 0, 0]),
        eligible=np.arange(3),
        email=pa.array(["a@example.com", None, "c@example.com"]),
        phone=pa.array(["+15555550101", "+15555550102", None]),
        ip=pa.array(["203.0.113.1", "203.0.113.2", "203.0.113.3"]),
        external_id=pa.array(["C-1-000001", "C-2-000001", "C-3-000001"]),
        alias_contact=np.zeros(0, np.int64),
        alias_email=pa.array([], pa.string()),
        alias_phone=pa.array([], pa.string()),
        alias_created=np.zeros(0, np.int64),
        user_agents=["Agent/1.0"],
    )


def _log_store(fields: dict[str, dict]) -> LogStore:
    return LogStore.model_validate(
        {
            "kind": "log",
            "bucket": "any-bucket",
            "prefix": "x/",
            "system": "crm",
            "timestamp_field": "time",
            "tenant_field": "account",
            "fields": fields,
        }
    )


def test_log_lines_take_their_names_from_the_data_map() -> None:
    app = _log_store(
        {
            "user_email": {"categories": ["identifiers"], "identity": "email"},
            "mobile": {"categories": ["identifiers"], "identity": "phone"},
            "cid": {"categories": ["identifiers"], "identity": "record_id"},
            "client_ip": {"categories": ["identifiers"]},
        }
    )
    raw = objects._log_lines(
        app, objects._shape(app), _population(), np.arange(3), date(2025, 1, 2), 0, 1, 400, 1, "x"
    )
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert len(lines) == 400
    keys = set().union(*lines)
    assert {"time", "account", "user_email", "mobile", "cid", "client_ip", "msg"} <= keys
    assert all(v is not None for line in lines for v in line.values())  # absent, never null
    mail = _log_store({"to": {"categories": ["identifiers"], "identity": "email"}})
    raw = objects._log_lines(
        mail,
        objects._shape(mail),
        _population(),
        np.array([0, 2]),
        date(2025, 1, 2),
        0,
        1,
        50,
        1,
        "m",
    )
    first = json.loads(raw.splitlines()[0])
    assert list(first) == ["time", "account", "to", "status", "msg_id"]


def test_values_needing_json_escapes_are_refused() -> None:
    with pytest.raises(ValueError, match="escaping"):
        objects._check_plain("names", ['O"Brien'])


def test_scales() -> None:
    assert Plan.for_scale("tiny").contacts == 150
    assert Plan.for_scale("small").contacts == 2_000
    assert Plan.for_scale("200k").contacts == 200_000
    assert Plan.for_scale(1234).log_days == 35
    large = Plan.for_scale("large")
    assert large.contacts >= 1_000_000
    with pytest.raises(ValueError):
        Plan.for_scale("huge")
    # raw application logs alone pass 1 GB at the large scale (~280 bytes a line)
    app = next(
        s
        for s in load_datamap(REPO / "config" / "datamap.yaml").stores.values()
        if isinstance(s, LogStore) and not objects._shape(s).mail
    )
    per_day = objects._lines_per_day(objects._shape(app), large.contacts)
    assert per_day * large.log_days * 250 > 1e9
