"""The demo CRM's tables: a service provider's view of its clients' consumers.

This is *one* CRM, the one `make demo` and the tests seed. Nothing outside `compliance_dev.world`
may import it: every job finds tables through the data map (`config/datamap.yaml`), so a user
can point the project at a CRM of a different shape by writing a different map.

Shape, following the privacy policy in `shared/reference/`:
- `clients` are the businesses (car dealers, realtors, ...). Tenant column everywhere: `client_id`.
- `contacts` are consumers; one person may have several rows (duplicate leads) and extra
  e-mails/phones in `contact_aliases`.
- Relations reach `contacts` at depth 1 (leads, messages, email_events, ...) and depth 2
  (`message_attachments` -> `messages`, `ticket_comments` -> `support_tickets`).
- Fields that R10 forbids disclosing exist on purpose (driver's licence, bank account,
  password hash, security answer, voiceprint) so access reports can prove they withhold them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite only autoincrements INTEGER

clients = Table(
    "clients",
    metadata,
    Column("client_id", ID, primary_key=True),
    Column("name", String(120), nullable=False),
    Column("industry", String(40), nullable=False),
    Column("state", String(2), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime, nullable=False),
    Column("contract_ended_at", DateTime),  # NULL while the contract runs (offboarding, R27)
)

contacts = Table(
    "contacts",
    metadata,
    Column("contact_id", ID, primary_key=True),
    Column("client_id", ID, ForeignKey("clients.client_id"), nullable=False),
    Column("external_id", String(64)),  # the client's own contact id
    Column("first_name", String(80)),
    Column("last_name", String(80)),
    Column("email", String(254)),
    Column("phone", String(20)),  # E.164
    Column("address_line", String(200)),
    Column("city", String(80)),
    Column("state", String(2)),
    Column("zip", String(10)),
    Column("birth_date", Date),
    Column("is_child", Boolean, nullable=False, default=False),  # under 13 (R24, R26)
    Column("parental_consent", Boolean),  # only meaningful for children
    Column("drivers_license", String(32)),  # government id, never disclosed (R10)
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

contact_aliases = Table(
    "contact_aliases",
    metadata,
    Column("alias_id", ID, primary_key=True),
    Column("contact_id", ID, ForeignKey("contacts.contact_id"), nullable=False),
    Column("client_id", ID, nullable=False),
    Column("email", String(254)),
    Column("phone", String(20)),
    Column("created_at", DateTime, nullable=False),
)

leads = Table(
    "leads",
    metadata,
    Column("lead_id", ID, primary_key=True),
    Column("contact_id", ID, ForeignKey("contacts.contact_id"), nullable=False),
    Column("client_id", ID, nullable=False),
    Column("source", String(40), nullable=False),
    Column("interest", String(200)),
    Column("score", Float),  # an inference about the consumer
    Column("created_at", DateTime, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("message_id", ID, primary_key=True),
    Column("contact_id", ID, ForeignKey("contacts.contact_id"), nullable=False),
    Column("client_id", ID, nullable=False),
    Column("channel", String(8), nullable=False),  # sms | email
    Column("direction", String(8), nullable=False),  # inbound | outbound
    Column("to_address", String(254)),
    Column("body", Text),
    Column("created_at", DateTime, nullable=False),
)

message_attachments = Table(
    "message_attachments",
    metadata,
    Column("attachment_id", ID, primary_key=True),
    Column("message_id", ID, ForeignKey("messages.message_id"), nullable=False),
    Column("filename", String(200)),
    Column("size_bytes", Integer),
    Column("created_at", DateTime, nullable=False),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("campaign_id", ID, primary_key=True),
    Column("client_id", ID, ForeignKey("clients.client_id"), nullable=False),
    Column("name", String(120), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("sent_at", DateTime, nullable=False),
)

email_events = Table(
    "email_events",
    metadata,
    Column("event_id", ID, primary_key=True),
    Column("campaign_id", ID, ForeignKey("campaigns.campaign_id"), nullable=False),
    Column("contact_id", ID, ForeignKey("contacts.contact_id"), nullable=False),
    Column("client_id", ID, nullable=False),
    Column("event_type", String(8), nullable=False),  # sent | open | click
    Column("device_type", String(16)),
    Column("os", String(24)),
    Column("browser", String(24)),
    Column("ip", String(45)),
    Column("geo_city", String(80)),
    Column("geo_region", String(8)),
    Column("occurred_at", DateTime, nullable=False),
)

web_visits = Table(
    "web_visits",
    metadata,
    Column("visit_id", ID, primary_key=True),
    Column("contact_id", ID, ForeignKey("contacts.contact_id"), nullable=False),
    Column("client_id", ID, nullable=False),
    Column("url", String(300)),
    Column("referrer", String(300)),
    Column("ip", String(45)),
    Column("user_agent", String(300)),
    Column("device_type", String(16)),
    Column("visited_at", DateTime, nullable=False),
)

call_recordings = Table(
    "call_recordings",
    metadata,
    Column("recording_id", ID, primary_key=True),
    Column("contact_id", ID, ForeignKey("contacts.contact_id"), nullable=False),
    Column("client_id", ID, nullable=False),
    Column("caller_phone", String(20)),
    Column("s3_key", String(300), nullable=False),
    Column("duration_s", Integer),
    Column("voiceprint", String(128)),  # speaker embedding digest: biometric, never disclosed (R10)
    Column("recorded_at", DateTime, nullable=False),
)

payments = Table(
    "payments",
    metadata,
    Column("payment_id", ID, primary_key=True),
    # Nullable: erasure keeps payment rows for the client's books (R19) and cuts the link.
    Column("contact_id", ID, ForeignKey("contacts.contact_id")),
    Column("client_id", ID, nullable=False),
    Column("card_token", String(64)),
    Column("card_last4", String(4)),
    Column("card_brand", String(16)),
    Column("bank_account", String(34)),  # financial account number, never disclosed (R10)
    Column("amount_cents", Integer, nullable=False),
    Column("paid_at", DateTime, nullable=False),
)

portal_accounts = Table(
    "portal_accounts",
    metadata,
    Column("account_id", ID, primary_key=True),
    Column("contact_id", ID, ForeignKey("contacts.contact_id"), nullable=False),
    Column("client_id", ID, nullable=False),
    Column("username", String(80)),
    Column("password_hash", String(128)),  # never disclosed (R10)
    Column("security_question", String(200)),
    Column("security_answer", String(200)),  # never disclosed (R10)
    Column("created_at", DateTime, nullable=False),
)

support_tickets = Table(
    "support_tickets",
    metadata,
    Column("ticket_id", ID, primary_key=True),
    Column("contact_id", ID, ForeignKey("contacts.contact_id"), nullable=False),
    Column("client_id", ID, nullable=False),
    Column("subject", String(200)),
    Column("body", Text),
    Column("created_at", DateTime, nullable=False),
)

ticket_comments = Table(
    "ticket_comments",
    metadata,
    Column("comment_id", ID, primary_key=True),
    Column("ticket_id", ID, ForeignKey("support_tickets.ticket_id"), nullable=False),
    Column("author", String(80)),
    Column("body", Text),
    Column("created_at", DateTime, nullable=False),
)

legal_holds = Table(
    "legal_holds",
    metadata,
    Column("hold_id", ID, primary_key=True),
    Column("client_id", ID, nullable=False),
    Column("contact_id", ID),  # null: the hold covers the client's whole scope
    Column("scope", String(40), nullable=False),  # "all" or a data-map table/store name
    Column("reason", String(200), nullable=False),
    Column("exception_code", String(40), nullable=False),  # R19 code, e.g. law_enforcement_hold
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime),
)

# Identity lookups and relation walks need these; they are part of the documented setup (issue 9).
INDEXES = [
    Index("ix_contacts_client_email", contacts.c.client_id, contacts.c.email),
    Index("ix_contacts_client_phone", contacts.c.client_id, contacts.c.phone),
    Index("ix_contacts_client_external", contacts.c.client_id, contacts.c.external_id),
    Index("ix_aliases_contact", contact_aliases.c.contact_id),
    Index("ix_aliases_client_email", contact_aliases.c.client_id, contact_aliases.c.email),
    Index("ix_aliases_client_phone", contact_aliases.c.client_id, contact_aliases.c.phone),
    Index("ix_leads_contact", leads.c.contact_id),
    Index("ix_messages_contact", messages.c.contact_id),
    Index("ix_attachments_message", message_attachments.c.message_id),
    Index("ix_events_contact", email_events.c.contact_id),
    Index("ix_events_occurred", email_events.c.occurred_at),
    Index("ix_visits_contact", web_visits.c.contact_id),
    Index("ix_recordings_contact", call_recordings.c.contact_id),
    Index("ix_payments_contact", payments.c.contact_id),
    Index("ix_accounts_contact", portal_accounts.c.contact_id),
    Index("ix_tickets_contact", support_tickets.c.contact_id),
    Index("ix_comments_ticket", ticket_comments.c.ticket_id),
    Index("ix_holds_client_contact", legal_holds.c.client_id, legal_holds.c.contact_id),
]
