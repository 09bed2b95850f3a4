"""R13 for backup stores: skipped only with all four conditions stated, searched otherwise.

The validator names each missing or blank condition with R13 (`not-searched`); the report's
not-searched list quotes the map; a snapshot loads into a temporary SQLite file with only the
mapped columns, and records of several snapshot days merge into one per row version.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from compliance.access import disclosure, snapshots
from compliance.core.datamap.backup_rules import CONDITIONS
from compliance.core.datamap.validate import check_text, load_datamap
from compliance.core.settings import REPO_ROOT
from compliance.core.shards import LogShard

DEMO = (REPO_ROOT / "config" / "datamap.yaml").read_text(encoding="utf-8")
SECOND = REPO_ROOT / "tests" / "second_world" / "datamap.yaml"
ALL_FOUR = {
    "not_reasonably_accessible": "sealed archive; a restore takes days and a records officer",
    "solely_legal_or_compliance": "kept only to meet a record-keeping obligation",
    "not_sold_or_used_commercially": "never sold, shared or analysed",
    "records_described": "archived copies of the CRM's contacts and messages",
}


def _check(not_searched: Any) -> list[tuple[str, str, str]]:
    doc = yaml.safe_load(DEMO)
    doc["stores"]["crm_backups"]["not_searched"] = not_searched
    _, issues = check_text(yaml.safe_dump(doc, sort_keys=False))
    return [(i.rule, i.location, i.message) for i in issues]


def test_the_four_conditions_are_the_ones_r13_names():
    assert list(CONDITIONS) == list(ALL_FOUR)


def test_all_four_stated_is_valid_and_the_store_is_skipped():
    assert _check(ALL_FOUR) == []
    doc = yaml.safe_load(DEMO)
    doc["stores"]["crm_backups"]["not_searched"] = ALL_FOUR
    dm, _ = check_text(yaml.safe_dump(doc))
    assert dm is not None and snapshots.searched_stores(dm) == {}
    listed = disclosure.not_searched(dm)
    assert [n["store"] for n in listed] == ["crm_backups"]
    assert listed[0]["conditions"] == ALL_FOUR


@pytest.mark.parametrize("missing", list(ALL_FOUR))
@pytest.mark.parametrize("how", ["absent", "empty", "blank"])
def test_each_missing_condition_is_an_error_naming_the_field_and_r13(missing: str, how: str):
    block = dict(ALL_FOUR)
    if how == "absent":
        del block[missing]
    else:
        block[missing] = "" if how == "empty" else "   "
    issues = _check(block)
    assert [(rule, loc) for rule, loc, _ in issues] == [
        ("not-searched", f"stores.crm_backups.not_searched.{missing}")
    ]
    message = issues[0][2]
    assert "R13" in message and f"`{missing}`" in message


def test_an_empty_block_is_refused_not_read_as_searched():
    for empty in (None, {}):
        issues = _check(empty)
        assert issues, empty
        assert all(rule == "not-searched" and "R13" in msg for rule, _, msg in issues)
    assert {loc for _, loc, _ in _check({})} == {
        f"stores.crm_backups.not_searched.{key}" for key in ALL_FOUR
    }
    assert [loc for _, loc, _ in _check(None)] == ["stores.crm_backups.not_searched"]


def test_an_unknown_condition_key_is_refused():
    issues = _check({**ALL_FOUR, "because": "we said so"})
    assert ("unknown-key", "stores.crm_backups.not_searched.because") in {
        (rule, loc) for rule, loc, _ in issues
    }


def test_the_demo_backups_are_searched_and_the_second_worlds_are_not():
    demo = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
    assert list(snapshots.searched_stores(demo)) == ["crm_backups"]
    assert disclosure.not_searched(demo) == []  # nothing skipped, nothing to list
    second = load_datamap(SECOND)
    assert snapshots.searched_stores(second) == {}
    assert [n["store"] for n in disclosure.not_searched(second)] == ["crm2_backups"]


def test_snapshot_day_is_checked_against_the_store():
    store = load_datamap(REPO_ROOT / "config" / "datamap.yaml").stores["crm_backups"]
    assert snapshots.snapshot_day(store, LogShard("crm_backups", "crm/2026-11-20/")) == "2026-11-20"
    for bad in ("crm/2026-11-20/x/", "other/2026-11-20/", "crm/latest/"):
        with pytest.raises(ValueError):
            snapshots.snapshot_day(store, LogShard("crm_backups", bad))


def test_identical_versions_merge_and_changed_ones_stay_apart():
    def rec(day: str | None, email: str) -> dict[str, Any]:
        out = {
            "source": "crm_backups.contacts" if day else "crm.contacts",
            "record": 7,
            "collected_at": "2026-01-01T00:00:00Z",
            "values": {"email": email},
            "withheld": [],
        }
        return {**out, "snapshot": day} if day else out

    merged = snapshots.merge_snapshot_records(
        [
            rec(None, "a@x.test"),
            rec("2026-11-19", "old@x.test"),
            rec("2026-11-18", "old@x.test"),
            rec("2026-11-20", "a@x.test"),
        ]
    )
    assert merged[0] == rec(None, "a@x.test")  # live rows pass unchanged
    backups = {r["values"]["email"]: r for r in merged[1:]}
    assert backups["old@x.test"]["snapshots"] == ["2026-11-18", "2026-11-19"]
    assert backups["old@x.test"]["values"][snapshots.SNAPSHOT_FIELD] == "2026-11-18, 2026-11-19"
    assert backups["a@x.test"]["snapshots"] == ["2026-11-20"]
    assert all("snapshot" not in r for r in merged)


def _csv_gz(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return gzip.compress(buf.getvalue().encode())


def test_a_snapshot_loads_only_mapped_columns_with_live_types(s3, tmp_path):
    dm = load_datamap(SECOND)
    store, system = dm.stores["crm2_backups"], dm.systems["crm2"]
    live = sa.create_engine(f"sqlite:///{tmp_path}/live.db")
    with live.begin() as conn:
        conn.exec_driver_sql(
            "create table people (person_uuid varchar(36) primary key, org_code varchar(8), "
            "signed_up_at timestamp, ref_code text, full_name text, primary_email text, "
            "mobile text, is_minor boolean, national_id text, secret_note text)"
        )
    s3.create_bucket(Bucket=store.bucket)
    key = f"{store.prefix}2026-11-20/people.csv.gz"
    body = _csv_gz(
        [
            "person_uuid",
            "org_code",
            "signed_up_at",
            "full_name",
            "is_minor",
            "national_id",
            "secret_note",
        ],
        [
            [
                "6f1c0a52-0000-4000-8000-000000000001",
                "01",
                "2026-03-04 05:06:07",
                "Ann",
                "t",
                "",
                "x",
            ],
            # another tenant ("1" is not "01"): skipped while streaming
            ["6f1c0a52-0000-4000-8000-000000000002", "1", "2026-03-04 05:06:07", "Bo", "f", "", ""],
        ],
    )
    s3.put_object(Bucket=store.bucket, Key=key, Body=body)
    with snapshots.loaded(s3, store, "2026-11-20", system, live, {"01"}) as (engine, counts):
        assert counts == {"people": 1}
        columns = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("people")}
        assert "secret_note" not in columns  # unmapped: never loaded
        assert isinstance(columns["signed_up_at"], sa.DateTime)
        with engine.connect() as conn:
            row = conn.execute(sa.text("select * from people")).mappings().one()
        path = engine.url.database
    assert row["signed_up_at"] in ("2026-03-04 05:06:07.000000", datetime(2026, 3, 4, 5, 6, 7))
    assert row["national_id"] is None and row["ref_code"] is None  # "" and absent: NULL
    assert not os.path.exists(path)  # the temporary file is gone
