"""The second world's CRM: a small sales CRM shaped nothing like the demo's contact database.

Why this shape: every awkward trait a real multi-tenant CRM has and the demo lacks is here on
purpose. Tenants are text (`org_code`, some of which look like numbers: `01` and `1` are two
organisations), consumers are keyed by UUID text, identities live on a parent (`people`) and a
child (`person_channels`) table, phones are stored E.164 on one and national with dashes on the
other, `deals -> deal_notes -> note_attachments` puts rows at depth 3, `note_attachments` and
`person_tags` have no time column, `person_tags` has a composite primary key, and the legal-hold
registry uses its own column names with a VARCHAR tenant.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TENANT = sa.String(64)
UUID_TEXT = sa.String(36)

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("org_code", TENANT, primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False),
    sa.Column("sector", sa.String(40), nullable=False),
    sa.Column("ended_on", sa.Date),  # the contract's end (offboarding, G4 Art. 28(3)(g))
)

people = sa.Table(
    "people",
    metadata,
    sa.Column("person_uuid", UUID_TEXT, primary_key=True),
    sa.Column("org_code", TENANT, sa.ForeignKey("orgs.org_code"), nullable=False, index=True),
    sa.Column("ref_code", sa.String(40), nullable=False),
    sa.Column("full_name", sa.String(200), nullable=False),
    sa.Column("primary_email", sa.String(254)),
    sa.Column("mobile", sa.String(32)),
    sa.Column("is_minor", sa.Boolean, nullable=False),
    sa.Column("national_id", sa.String(32)),
    sa.Column("signed_up_at", sa.DateTime, nullable=False),
)

person_channels = sa.Table(
    "person_channels",
    metadata,
    sa.Column("channel_id", sa.String(40), primary_key=True),
    sa.Column(
        "person_uuid", UUID_TEXT, sa.ForeignKey("people.person_uuid"), nullable=False, index=True
    ),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("email", sa.String(254)),
    sa.Column("phone", sa.String(32)),
    sa.Column("verified_at", sa.DateTime, nullable=False),
)

person_tags = sa.Table(
    "person_tags",
    metadata,
    sa.Column("person_uuid", UUID_TEXT, sa.ForeignKey("people.person_uuid"), primary_key=True),
    sa.Column("tag", sa.String(60), primary_key=True),
)

portal_logins = sa.Table(
    "portal_logins",
    metadata,
    sa.Column("login_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column(
        "person_uuid", UUID_TEXT, sa.ForeignKey("people.person_uuid"), nullable=False, index=True
    ),
    sa.Column("username", sa.String(80), nullable=False),
    sa.Column("pass_digest", sa.String(100), nullable=False),
    sa.Column("recovery_answer", sa.String(100)),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

deals = sa.Table(
    "deals",
    metadata,
    sa.Column("deal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column(
        "person_uuid", UUID_TEXT, sa.ForeignKey("people.person_uuid"), nullable=False, index=True
    ),
    sa.Column("org_code", TENANT, nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("amount_cents", sa.Integer, nullable=False),
    sa.Column("opened_at", sa.DateTime, nullable=False),
)

deal_notes = sa.Table(
    "deal_notes",
    metadata,
    sa.Column("note_id", sa.String(40), primary_key=True),
    sa.Column("deal_id", sa.Integer, sa.ForeignKey("deals.deal_id"), nullable=False, index=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("written_at", sa.DateTime, nullable=False),
)

note_attachments = sa.Table(
    "note_attachments",
    metadata,
    sa.Column("attachment_key", sa.String(80), primary_key=True),
    sa.Column(
        "note_id", sa.String(40), sa.ForeignKey("deal_notes.note_id"), nullable=False, index=True
    ),
    sa.Column("filename", sa.String(200), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
)

litigation_holds = sa.Table(
    "litigation_holds",
    metadata,
    sa.Column("hold_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("org", sa.String(64), nullable=False),
    sa.Column("subject_uuid", UUID_TEXT),
    sa.Column("applies_to", sa.String(64), nullable=False),
    sa.Column("why", sa.Text, nullable=False),
    sa.Column("basis", sa.String(40), nullable=False),
    sa.Column("lifted_at", sa.DateTime),
)

# Every table that belongs to a consumer, and the column(s) of its primary key, in insert order.
CONSUMER_TABLES = [
    "people",
    "person_channels",
    "person_tags",
    "portal_logins",
    "deals",
    "deal_notes",
    "note_attachments",
]
# The time column of each consumer table; None: the table has none (no timestamp at all).
TIME_COLUMNS = {
    "people": "signed_up_at",
    "person_channels": "verified_at",
    "person_tags": None,
    "portal_logins": "created_at",
    "deals": "opened_at",
    "deal_notes": "written_at",
    "note_attachments": None,
}
# The parent each table's time falls back to, when it has none of its own.
PARENT = {
    "person_channels": "people",
    "person_tags": "people",
    "portal_logins": "people",
    "deals": "people",
    "deal_notes": "deals",
    "note_attachments": "deal_notes",
}


def create(engine: sa.Engine) -> None:
    metadata.create_all(engine)
