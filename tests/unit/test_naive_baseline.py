"""The independent naive baseline (issue 19, deliverable 5) really deletes, and only its consumer.

`benchmarks.sections.naive` is a cron-style script that shares no code with the product: its
speed is the baseline of the deletion batch's ">= 50x" figure, so it must not be fast because it
does nothing. On the tiny world (PostgreSQL CRM + moto S3, seeded as the harness seeds it), three
consumers are deleted by it, one per identity kind (e-mail in upper case, phone, the client's
contact id). The checks are independent of the script: raw SQL counts per table, and the log
objects read back and parsed as JSON, each line attributed to the contacts whose id, e-mail
(any case) or phone it carries. A bystander consumer keeps every row and every log line.
"""

from __future__ import annotations

import ast
import gzip
import json
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from benchmarks.sections import naive
from compliance.core.datamap.model import LogStore
from compliance.core.datamap.validate import load_datamap
from compliance_dev.world.generate import seed_world

pytestmark = [pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
AS_OF = date(2025, 6, 1)
# contact-linked tables (by contact_id) and the two reached through a parent
LINKED = [
    "contacts",
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


@pytest.fixture(scope="module")
def datamap() -> Any:
    return load_datamap(REPO / "config" / "datamap.yaml")


def test_naive_code_imports_nothing_from_the_product() -> None:
    tree = ast.parse((REPO / "benchmarks" / "sections" / "naive.py").read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not any(n == "compliance" or n.startswith("compliance.") for n in names), names


def test_hand_written_lists_cover_the_data_map(datamap: Any) -> None:
    """The script's tables and log locations are written by hand: if the demo map grows a
    table or a log store, the baseline must grow with it (or it would do less work)."""
    deleted = {table for table, _ in naive.DELETES}
    assert set(datamap.systems["crm"].tables) <= deleted
    stores = {(s.bucket, s.prefix) for s in datamap.stores.values() if isinstance(s, LogStore)}
    assert stores == set(naive.LOG_LOCATIONS)


def test_scrub_object_drops_exactly_the_matching_lines() -> None:
    data = (
        b'{"ts":"t1","client_id":1,"contact_id":12,"email":"A.B@X.Com"}\n'
        b'{"ts":"t2","client_id":1,"contact_id":123,"email":"c@x.com"}\n'
        b'{"at":"t3","tenant":1,"rcpt":"a.b@x.com"}\n'
        b'{"ts":"t4","client_id":2,"phone":"+15550001"}\n'
        b'{"ts":"t5","client_id":2,"phone":"+155500012"}\n'
    )
    wanted = naive.needles([12], ["a.b@x.com"], ["+15550001"])
    kept, dropped = naive.scrub_object(data, wanted)
    assert dropped == 3
    assert kept == (
        b'{"ts":"t2","client_id":1,"contact_id":123,"email":"c@x.com"}\n'
        b'{"ts":"t5","client_id":2,"phone":"+155500012"}\n'
    )
    assert naive.scrub_object(data, naive.needles([7], ["z@x.com"], [])) == (None, 0)


def _log_lines(s3: Any) -> list[dict[str, Any]]:
    out = []
    for bucket, prefix in naive.LOG_LOCATIONS:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                for line in gzip.decompress(body).decode().splitlines():
                    out.append(json.loads(line))
    return out


class World:
    """Who holds which identity (contacts and aliases), read with raw SQL."""

    def __init__(self, conn: sa.Connection) -> None:
        self.contacts = {
            int(r.contact_id): r
            for r in conn.execute(
                sa.text("SELECT contact_id, client_id, email, phone, external_id FROM contacts")
            )
        }
        self.emails: dict[int, set[str]] = {c: set() for c in self.contacts}
        self.phones: dict[int, set[str]] = {c: set() for c in self.contacts}
        for r in self.contacts.values():
            self._add(int(r.contact_id), r.email, r.phone)
        for r in conn.execute(sa.text("SELECT contact_id, email, phone FROM contact_aliases")):
            self._add(int(r.contact_id), r.email, r.phone)
        self.by_email: dict[str, set[int]] = {}
        self.by_phone: dict[str, set[int]] = {}
        for cid in self.contacts:
            for e in self.emails[cid]:
                self.by_email.setdefault(e, set()).add(cid)
            for p in self.phones[cid]:
                self.by_phone.setdefault(p, set()).add(cid)

    def _add(self, cid: int, email: str | None, phone: str | None) -> None:
        if email:
            self.emails[cid].add(email.lower())
        if phone:
            self.phones[cid].add(phone)

    def owners(self, line: dict[str, Any]) -> set[int]:
        """The contacts a log line names, by id, e-mail (any case) or phone."""
        who: set[int] = set()
        if "contact_id" in line:
            who.add(int(line["contact_id"]))
        for key in ("email", "rcpt"):
            if line.get(key):
                who |= self.by_email.get(str(line[key]).lower(), set())
        if line.get("phone"):
            who |= self.by_phone.get(str(line["phone"]), set())
        return who

    def alone(self, cid: int) -> bool:
        """No other contact (in any client) shares one of its e-mails or phones."""
        return all(self.by_email[e] == {cid} for e in self.emails[cid]) and all(
            self.by_phone[p] == {cid} for p in self.phones[cid]
        )


def _counts(conn: sa.Connection, ids: list[int]) -> dict[str, int]:
    out = {
        t: conn.execute(
            sa.text(f"SELECT count(*) FROM {t} WHERE contact_id = ANY(:ids)"), {"ids": ids}
        ).scalar_one()
        for t in LINKED
    }
    out["message_attachments"] = conn.execute(
        sa.text(
            "SELECT count(*) FROM message_attachments a JOIN messages m "
            "ON m.message_id = a.message_id WHERE m.contact_id = ANY(:ids)"
        ),
        {"ids": ids},
    ).scalar_one()
    out["ticket_comments"] = conn.execute(
        sa.text(
            "SELECT count(*) FROM ticket_comments c JOIN support_tickets t "
            "ON t.ticket_id = c.ticket_id WHERE t.contact_id = ANY(:ids)"
        ),
        {"ids": ids},
    ).scalar_one()
    return out


def test_naive_request_deletes_its_consumer_only(
    pg_url: str, s3: Any, s3_endpoint: str, datamap: Any
) -> None:
    engine = sa.create_engine(pg_url)
    seed_world(engine, s3, datamap, "tiny", 7, AS_OF)
    before_lines = _log_lines(s3)
    n_objects = sum(
        len(s3.list_objects_v2(Bucket=b, Prefix=p).get("Contents", []))
        for b, p in naive.LOG_LOCATIONS
    )
    with engine.connect() as conn:
        world = World(conn)
    per_contact = Counter(cid for line in before_lines for cid in world.owners(line))
    # consumers whose identities nobody else holds (the script keeps no tenant scope in logs),
    # who appear in the logs, most lines first
    candidates = sorted(
        (c for c in world.contacts if world.alone(c) and per_contact[c] > 0),
        key=lambda c: (-per_contact[c], c),
    )
    by_email, by_phone = candidates[0], next(c for c in candidates[1:] if world.contacts[c].phone)
    by_external = next(
        c for c in candidates if c not in (by_email, by_phone) and world.contacts[c].external_id
    )
    victims = [by_email, by_phone, by_external]
    bystander = next(c for c in candidates if c not in victims)
    with engine.connect() as conn:
        victims_before = _counts(conn, victims)
        bystander_before = _counts(conn, [bystander])
        payments_before = (
            conn.execute(
                sa.text("SELECT payment_id FROM payments WHERE contact_id = ANY(:ids)"),
                {"ids": victims},
            )
            .scalars()
            .all()
        )
    assert victims_before["contacts"] == 3
    assert sum(victims_before.values()) > 3  # they have related rows to delete

    requests = [
        (by_email, "email", str(world.contacts[by_email].email).upper()),
        (by_phone, "phone", str(world.contacts[by_phone].phone)),
        (by_external, "contact_id", str(world.contacts[by_external].external_id)),
    ]
    dsn = naive.pg_dsn(pg_url)
    results = [
        naive.naive_request(dsn, s3_endpoint, int(world.contacts[c].client_id), kind, value)
        for c, kind, value in requests
    ]
    for res in results:
        assert res["contacts"] >= 1
        assert res["lines"] > 0
        assert res["objects"] == n_objects  # a full pass over every log object

    with engine.connect() as conn:
        assert _counts(conn, victims) == dict.fromkeys(victims_before, 0)
        assert _counts(conn, [bystander]) == bystander_before
        kept = conn.execute(
            sa.text(
                "SELECT count(*) FROM payments WHERE payment_id = ANY(:ids) AND contact_id IS NULL "
                "AND card_token IS NULL AND card_last4 IS NULL AND bank_account IS NULL"
            ),
            {"ids": payments_before},
        ).scalar_one()
    assert kept == len(payments_before)  # masked, kept for the client's books (R19)

    after_lines = _log_lines(s3)
    gone = set(victims)
    assert sum(1 for line in after_lines if world.owners(line) & gone) == 0  # counts: no PII
    victim_lines = [line for line in before_lines if world.owners(line) & gone]
    assert victim_lines
    # nothing else was dropped: the bystander's lines and every other line are still there
    assert len(after_lines) == len(before_lines) - len(victim_lines)
    assert (
        sum(1 for line in after_lines if bystander in world.owners(line))
        == (per_contact[bystander])
    )
    assert sum(r["lines"] for r in results) == len(victim_lines)
    engine.dispose()
