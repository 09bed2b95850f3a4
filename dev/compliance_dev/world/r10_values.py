"""R10 fixtures: values an access report must never show, planted where the data map does not
look (issue 16, deliverable 5).

One consumer of the world gets:

- a support ticket whose free-text body (a mapped column) holds an SSN, a payment card number
  and a bank routing and account number, as an agent might type them from a call. Its
  `created_at` is before the first CRM backup snapshot, so a snapshot holds the same row (a
  backup row);
- a log line (in every log store that searches by e-mail) whose `msg` free text holds an SSN
  and a card number, and whose unmapped JSON keys hold an SSN, a routing number, an account
  number, a Medicare MBI, a passport and a driver's licence number.

Every value has the right format and check digits (Luhn, ABA, the CMS MBI format), so it is what
the R10 scanner must catch, and none of them is a real person's. Tests find the consumer with
`find` (the ticket's fixed subject) and scan every file of the bundle for `VALUES`.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from compliance.core.datamap.model import DataMap, IdentityType, LogStore

SUBJECT = "Payment details read out on a call (R10 fixture)"
# Three days before the world's day: inside every log period and before the first backup
# snapshot (so snapshot rows hold the ticket), and not a day folder the data inventory samples
# for drift (the oldest and the newest two): the unmapped keys are planted on purpose.
DAYS_BEFORE = 3

# type -> the raw value as planted (each passes its checksum; test values, nobody's)
VALUES: dict[str, str] = {
    "ssn": "219-09-9999",
    "ssn_bare": "078051120",  # under an unmapped `ssn` key: 9 digits, no dashes
    "card": "4539 1488 0343 6467",  # Visa, Luhn-valid
    "card_bare": "5425233430109903",  # Mastercard, Luhn-valid
    "routing": "021000021",  # ABA checksum valid
    "account": "000123456789",
    "mbi": "1EG4-TE5-MK73",  # CMS's own example format
    "passport": "X20847163",
    "drivers_licence": "D7302915",
}
# the statement each type is replaced by (`compliance.access.r10.statement`)
STATEMENTS: dict[str, str] = {
    "ssn": "[withheld: social security number held]",
    "card": "[withheld: payment card number held]",
    "routing": "[withheld: bank routing number held]",
    "account": "[withheld: bank account number held]",
    "mbi": "[withheld: Medicare beneficiary identifier held]",
    "passport": "[withheld: passport number held]",
    "drivers_licence": "[withheld: drivers licence number held]",
}

TICKET_BODY = (
    f"Caller gave SSN {VALUES['ssn']} and card {VALUES['card']} to update billing; "
    f"refund to routing {VALUES['routing']} account number {VALUES['account']}."
)
LOG_MSG = f"payment retry for ssn {VALUES['ssn']} with card {VALUES['card_bare']}"


@dataclass(frozen=True)
class Planted:
    contact_id: int
    client_id: int
    email: str
    ticket_id: int
    when: datetime  # aware UTC


def plant_rows(engine: sa.Engine, as_of: date) -> Planted:
    """The ticket, for the first adult contact with an e-mail at an active client."""
    when = datetime.combine(as_of - timedelta(days=DAYS_BEFORE), time(12), UTC)
    with engine.begin() as conn:
        row = conn.execute(
            sa.text(
                "select c.contact_id, c.client_id, c.email from contacts c join clients k "
                "on k.client_id = c.client_id where k.active = true and c.is_child = false "
                "and c.email is not null order by c.contact_id limit 1"
            )
        ).one()
        ticket = int(
            conn.execute(
                sa.text("select coalesce(max(ticket_id), 0) + 1 from support_tickets")
            ).scalar_one()
        )
        conn.execute(
            sa.text(
                "insert into support_tickets (ticket_id, contact_id, client_id, subject, body, "
                "created_at) values (:t, :c, :k, :s, :b, :w)"
            ),
            {
                "t": ticket,
                "c": row[0],
                "k": row[1],
                "s": SUBJECT,
                "b": TICKET_BODY,
                "w": when.replace(tzinfo=None),
            },
        )
    return Planted(int(row[0]), int(row[1]), str(row[2]), ticket, when)


def log_line(store: LogStore, planted: Planted) -> dict[str, Any] | None:
    """The planted line for one log store (flat keys), or None when it has no e-mail field."""
    email = next(
        (n for n, f in store.fields.items() if f.identity is IdentityType.email and "." not in n),
        None,
    )
    if email is None or "." in store.timestamp_field or "." in store.tenant_field:
        return None
    return {
        store.timestamp_field: planted.when.isoformat().replace("+00:00", "Z"),
        store.tenant_field: planted.client_id,
        email: planted.email,
        "msg": LOG_MSG,
        "customer": {"ssn": VALUES["ssn_bare"], "passport": VALUES["passport"]},
        "routing_number": VALUES["routing"],
        "bank": {"account_number": VALUES["account"]},
        "medicare_id": VALUES["mbi"],
        "drivers_license": VALUES["drivers_licence"],
    }


def write_log_lines(s3: Any, datamap: DataMap, planted: Planted) -> list[tuple[str, str]]:
    """One extra object per log store, in the planted day's folder; returns (store, key)."""
    keys = []
    for name, store in datamap.stores.items():
        if not isinstance(store, LogStore):
            continue
        line = log_line(store, planted)
        if line is None:
            continue
        key = f"{store.prefix}{planted.when.strftime(store.partition)}part-r10-fixture.jsonl.gz"
        body = gzip.compress(json.dumps(line).encode() + b"\n", mtime=0)
        s3.put_object(Bucket=store.bucket, Key=key, Body=body)
        keys.append((name, key))
    return keys


def find(conn: sa.Connection) -> tuple[int, int, str]:
    """(contact_id, client_id, e-mail) of the planted consumer."""
    row = conn.execute(
        sa.text(
            "select t.contact_id, t.client_id, c.email from support_tickets t join contacts c "
            "on c.contact_id = t.contact_id where t.subject = :s"
        ),
        {"s": SUBJECT},
    ).one()
    return int(row[0]), int(row[1]), str(row[2])
