"""Backups in access reports (R13), end to end through `access_reports` (dag.test()).

1. The demo's disaster-recovery backups are searched: a consumer's rows in the CRM snapshots,
   including a message (and its attachment, related only through the message) deleted from the
   live CRM since, are in the bundle as their own source, each with the snapshot days that held
   it. What the bundle must hold is computed by reading the snapshot csv.gz objects directly in
   this test (csv + gzip), not through the code under test.
2. The same world under a map that declares the store not searched with R13's four conditions:
   no snapshot is read, and the bundle lists the store with the four statements, as given.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import yaml

from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT
from compliance.requests.intake import add_months

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
STORE = DM.stores["crm_backups"]
NOW = datetime.now(UTC).replace(microsecond=0)
RECEIVED = NOW - timedelta(days=3)
SINCE = datetime.combine(add_months(RECEIVED.date(), -12), datetime.min.time(), UTC)
R13 = {
    "not_reasonably_accessible": "Sealed copies in a vault account; a restore takes a week.",
    "solely_legal_or_compliance": "Kept only to meet a statutory record-keeping duty.",
    "not_sold_or_used_commercially": "Never sold, shared, analysed or used commercially.",
    "records_described": "Archived nightly copies of the CRM tables listed in this report.",
}


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _snapshot(s3, day: str, table: str) -> list[dict[str, str]]:
    """One table of one snapshot, read directly: gzip (several members) + csv."""
    key = f"{STORE.prefix}{day}/{table}.csv.gz"
    raw = s3.get_object(Bucket=STORE.bucket, Key=key)["Body"].read()
    return list(csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8"))))


def _days(s3) -> list[str]:
    listed = s3.list_objects_v2(Bucket=STORE.bucket, Prefix=STORE.prefix, Delimiter="/")
    return sorted(p["Prefix"][len(STORE.prefix) : -1] for p in listed.get("CommonPrefixes", []))


OWNED_BY_CONTACT = [
    "contact_aliases",
    "leads",
    "messages",
    "email_events",
    "web_visits",
    "call_recordings",
    "payments",
    "portal_accounts",
    "support_tickets",
]


def _pick(url: str, first_day: str, *, skip: tuple = (), whole: bool = False) -> dict:
    """A consumer of an active client with an e-mail held by one contact of the tenant, and a
    message with an attachment inside the window, in every snapshot. The message leaves the
    live CRM; with `whole`, the consumer does too (every row of theirs)."""
    eng = sa.create_engine(url)
    with eng.connect() as c:
        rows = c.execute(
            sa.text(
                "select c.contact_id, c.client_id, lower(c.email), m.message_id, "
                "a.attachment_id, m.created_at from contacts c "
                "join clients k on k.client_id = c.client_id "
                "join messages m on m.contact_id = c.contact_id "
                "join message_attachments a on a.message_id = m.message_id "
                "where k.active = true and c.is_child = false and c.email is not null "
                "order by c.contact_id, m.message_id"
            )
        ).all()
        for cid, client, email, mid, aid, created in rows:  # noqa: B007 - used after
            moment = created if isinstance(created, datetime) else _time(str(created))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            if cid in skip or not (SINCE + timedelta(days=1) <= moment < _time(first_day)):
                continue
            same = c.execute(
                sa.text("select count(*) from contacts where client_id = :a and lower(email) = :e"),
                {"a": client, "e": email},
            ).scalar()
            if same == 1:
                break
        else:
            pytest.fail("the tiny world has no suitable consumer")
        # the message and its attachments leave the live CRM; the snapshots keep them
        c.execute(sa.text("delete from message_attachments where message_id = :m"), {"m": mid})
        c.execute(sa.text("delete from messages where message_id = :m"), {"m": mid})
        if whole:
            for child, parent, key in (
                ("message_attachments", "messages", "message_id"),
                ("ticket_comments", "support_tickets", "ticket_id"),
            ):
                c.execute(
                    sa.text(
                        f"delete from {child} where {key} in "
                        f"(select {key} from {parent} where contact_id = :c)"
                    ),
                    {"c": cid},
                )
            for table in [*OWNED_BY_CONTACT, "contacts"]:
                c.execute(sa.text(f"delete from {table} where contact_id = :c"), {"c": cid})
        c.commit()
    eng.dispose()
    return {"contact": cid, "client": client, "email": email, "message": mid, "attachment": aid}


def _request(stack, who: dict, request_id: str, *more: tuple[dict, str]) -> None:
    for person, ref in ((who, request_id), *more):
        doc = {
            "request_id": ref,
            "client_id": person["client"],
            "type": "access",
            "identities": {"email": person["email"]},
            "received_at": RECEIVED.isoformat(),
            "verification": {
                "method": "account_login",
                "verified_at": RECEIVED.isoformat(),
                "verified_by": "staff-7",
            },
        }
        stack.s3.put_object(
            Bucket=stack.bucket,
            Key=f"inbox/{person['client']}/access-backups-{ref}.ndjson",
            Body=json.dumps(doc).encode(),
        )


def _expected(s3, who: dict) -> dict[tuple[str, int], set[str]]:
    """(table, id) -> snapshot days holding it, for the consumer's contacts, messages and
    attachments inside the window, read from the snapshot files alone."""
    found: dict[tuple[str, int], set[str]] = defaultdict(set)
    client, email = str(who["client"]), who["email"]

    def inside(row: dict[str, str]) -> bool:
        return SINCE <= _time(row["created_at"]) <= RECEIVED

    for day in _days(s3):
        ids = {
            r["contact_id"]
            for r in _snapshot(s3, day, "contacts")
            if r["client_id"] == client and r["email"].lower() == email
        } | {
            r["contact_id"]
            for r in _snapshot(s3, day, "contact_aliases")
            if r["client_id"] == client and r["email"].lower() == email
        }
        contacts = [
            r for r in _snapshot(s3, day, "contacts") if r["contact_id"] in ids
        ]  # tenant checked above: contact ids are per tenant
        messages = [
            r
            for r in _snapshot(s3, day, "messages")
            if r["contact_id"] in ids and r["client_id"] == client
        ]
        owned = {r["message_id"] for r in messages}
        attachments = [
            r for r in _snapshot(s3, day, "message_attachments") if r["message_id"] in owned
        ]
        for table, pk, rows in (
            ("contacts", "contact_id", contacts),
            ("messages", "message_id", messages),
            ("message_attachments", "attachment_id", attachments),
        ):
            for r in rows:
                if inside(r):
                    found[(table, int(r[pk]))].add(day)
    return dict(found)


def _bundle(stack, who: dict, request_id: str) -> tuple[dict, str]:
    import zipfile

    key = f"access/{who['client']}/{request_id}/bundle.zip"
    raw = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    zf = zipfile.ZipFile(io.BytesIO(raw))
    return json.loads(zf.read("data.json")), zf.read("index.html").decode()


def _backup_rows(data: dict) -> dict[tuple[str, int], set[str]]:
    """(table, id) -> snapshot days, of the bundle's backup sources (three tables)."""
    got: dict[tuple[str, int], set[str]] = defaultdict(set)
    for src in data["sources"]:
        if not src["source"].startswith("crm_backups."):
            continue
        assert src["kind"] == "backup" and "held_in_snapshots" in {f["name"] for f in src["fields"]}
        table = src["source"].split(".", 1)[1]
        for rec in src["records"]:
            if table in {"contacts", "messages", "message_attachments"}:
                held = rec["values"]["held_in_snapshots"].split(", ")
                got[(table, int(rec["record"]))].update(held)
    return dict(got)


def test_backups_are_searched_and_a_deleted_row_is_disclosed(stack):
    days = _days(stack.s3)
    assert len(days) >= 2
    who = _pick(stack.db_url, days[0])
    # a second consumer erased from the live CRM altogether: found in the snapshots only
    gone = _pick(stack.db_url, days[0], skip=(who["contact"],), whole=True)
    _request(stack, who, "ACC-BK", (gone, "ACC-GONE"))
    run = stack.run_dag("access_reports", {"link_expiry_days": 3})
    assert run.state == "success"

    for person, ref in ((who, "ACC-BK"), (gone, "ACC-GONE")):
        expected = _expected(stack.s3, person)
        assert ("messages", person["message"]) in expected  # in the snapshots, not the CRM
        assert ("message_attachments", person["attachment"]) in expected
        data, html = _bundle(stack, person, ref)
        assert _backup_rows(data) == expected, ref
    data, html = _bundle(stack, gone, "ACC-GONE")
    assert not [s for s in data["sources"] if s["source"].startswith("crm.")]  # none live
    data, html = _bundle(stack, who, "ACC-BK")
    # the deleted message: in the backups' source, not in the live CRM's
    live = {
        r["record"] for s in data["sources"] if s["source"] == "crm.messages" for r in s["records"]
    }
    assert who["message"] not in live
    assert data["not_searched"] == []  # R13: nothing skipped
    assert "crm_backups.messages" in html
    # R10 holds for backups too: a withheld column of a snapshot row is never shown
    withheld = {
        c for t in DM.systems["crm"].tables.values() for c, col in t.columns.items() if col.withhold
    }
    shown = {
        k
        for s in data["sources"]
        if s["kind"] == "backup"
        for r in s["records"]
        for k, v in r["values"].items()
        if v is not None
    }
    assert shown and not shown & withheld


def test_a_store_declared_not_searched_is_listed_with_its_four_conditions(stack, monkeypatch):
    import os

    days = _days(stack.s3)
    with open(os.environ["COMPLIANCE_DATAMAP"], encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    doc["stores"]["crm_backups"]["not_searched"] = R13
    path = os.path.join(os.path.dirname(os.environ["COMPLIANCE_DATAMAP"]), "datamap-r13.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    monkeypatch.setenv("COMPLIANCE_DATAMAP", path)
    who = _pick(stack.db_url, days[0])
    _request(stack, who, "ACC-NS")
    run = stack.run_dag("access_reports", {"link_expiry_days": 3})
    assert run.state == "success"

    data, html = _bundle(stack, who, "ACC-NS")
    assert not [s for s in data["sources"] if s["source"].startswith("crm_backups")]
    assert [n["store"] for n in data["not_searched"]] == ["crm_backups"]
    listed = data["not_searched"][0]
    assert listed["rule"] == "R13" and listed["conditions"] == R13
    for statement in R13.values():
        assert statement in html
    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "gather_backups"]
    assert all(ti.state in (None, "skipped") for ti in mapped)  # no snapshot was read
