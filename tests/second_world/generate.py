"""The second world's generator: a few hundred rows and log lines from one seed, with ground truth.

Why it is built this way (and not like the demo's generator, whose code it shares none of):
- Everything is built in plain Python first (`build`), so the ground truth (which row, line and
  value belongs to which person) is recorded as each item is made, never re-derived from the
  stores afterwards. The checker judges the product against this record.
- Times are whole seconds before `as_of` midnight (UTC, naive in the database) and steer clear of
  the retention policy's cut-offs by a few days, so "older than the period" never depends on how
  a month is counted.
- Special people are planted by role (`World.roles`): twins in other tenants, a held consumer, a
  consumer whose phone exists only in national form on the child table, a consumer of the
  unicode tenant, minors, an inactive consumer, deep deal chains...
- `seed` writes the rows (SQLAlchemy Core, SQLite or PostgreSQL) and the objects (S3): JSON-lines
  logs with nested identities in two layouts, and CSV backups in the documented layout.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import phonenumbers
import sqlalchemy as sa

from . import schema

SEED = 20261205

# Tenants: text ids, two of which look like the same number, a UUID-ish one and a unicode one.
ORGS: list[tuple[str, str, bool, str]] = [
    ("acme-east", "Acme East Motors", True, "automotive"),
    ("01", "Zero-One Realty", True, "real_estate"),
    ("1", "One Fitness", True, "fitness"),
    ("7f3c9a2e-5b1d-4c8e-9f00-1a2b3c4d5e6f", "Northwind Clinics", True, "health"),
    ("zürich-süd", "Zürich Süd Immobilien", True, "real_estate"),
    ("dormant-co", "Dormant Company", False, "retail"),
]
UUID_TENANT = ORGS[3][0]
UNICODE_TENANT = ORGS[4][0]
INACTIVE_TENANT = ORGS[5][0]

LOG_BUCKET = "crm2-events"
BACKUP_BUCKET = "crm2-snapshots"
ACTIVITY = "activity_logs"
DELIVERY = "delivery_logs"
BACKUPS = "crm2_backups"
STORE_PREFIX = {ACTIVITY: "activity/", DELIVERY: "delivery/", BACKUPS: "nightly/crm2/"}
STORE_PARTITION = {ACTIVITY: "%Y/%m/%d/", DELIVERY: "day=%Y%m%d/"}
LOG_DAYS = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 34, 36, 38, 40, 42]
BACKUP_DAYS = [50, 2, 1]
# Days before as_of near which no row time may fall (the retention policy's cut-offs, +- 3 days).
_CUTOFF_DAYS = [60, 547, 548, 730, 731, 1095, 1096]

FIRST = [
    "Anna",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Liam",
    "Mona",
    "Noah",
    "Olga",
    "Paul",
]
LAST = [
    "Berg",
    "Costa",
    "Dahl",
    "Egger",
    "Fuchs",
    "Graf",
    "Huber",
    "Ito",
    "Jung",
    "Keller",
    "Lenz",
    "Meier",
    "Novak",
    "Ortiz",
    "Peters",
]
DOMAINS = ["example.test", "mail.example.com", "corp.internal", "home.local", "example.org"]
AREAS = ["415", "628", "510", "212"]
TAGS = ["vip", "newsletter", "trade-in", "first-home", "referral", "spanish", "weekend"]
EVENTS = ["deal.shared", "note.viewed", "quote.sent", "portal.login", "sms.sent"]
AGENTS = ["Mozilla/5.0 (X11; Linux)", "CRMApp/3.2 iOS", "curl/8.4"]


@dataclass
class Person:
    uuid: str
    org: str
    ref_code: str
    full_name: str
    primary_email: str | None
    mobile: str | None  # E.164 as stored
    channel_emails: list[str] = field(default_factory=list)
    channel_phones: list[str] = field(default_factory=list)  # national with dashes, as stored
    is_minor: bool = False
    national_id: str | None = None
    signed_up: datetime = datetime(2020, 1, 1)
    secrets: set[str] = field(default_factory=set)  # R10 values: never in an access bundle

    @property
    def emails(self) -> set[str]:
        """Every e-mail of the person, lower-cased (e-mails compare case-insensitively)."""
        found = [self.primary_email, *self.channel_emails]
        return {e.lower() for e in found if e}

    @property
    def phones(self) -> set[str]:
        """Every phone of the person in E.164, whatever form the CRM stored it in."""
        return {e164(p) for p in [self.mobile, *self.channel_phones] if p}

    @property
    def stored_phones(self) -> set[str]:
        return {p for p in [self.mobile, *self.channel_phones] if p}


@dataclass(frozen=True)
class Row:
    table: str
    key: tuple[str, ...]  # the primary key's values as text, in key order
    owner: str  # person uuid
    tenant: str
    time: datetime | None  # the row's own time column, None for timeless tables
    parent: tuple[str, tuple[str, ...]] | None  # (table, key) one step toward the person


@dataclass(frozen=True)
class Line:
    store: str
    bucket: str
    key: str
    index: int
    raw: bytes  # without the newline
    tenant: str
    ts: datetime  # aware UTC
    owners: frozenset[str]  # persons whose identities sit at mapped paths of this line
    secrets: frozenset[str]  # R10 values in the line


@dataclass(frozen=True)
class Hold:
    org: str
    subject: str | None
    scope: str
    lifted_at: datetime | None


@dataclass
class World:
    seed: int
    as_of: date
    persons: dict[str, Person] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # role -> person uuid
    rows: dict[tuple[str, tuple[str, ...]], Row] = field(default_factory=dict)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # table -> SQL rows
    lines: list[Line] = field(default_factory=list)
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)  # every object written
    holds: list[Hold] = field(default_factory=list)

    @property
    def midnight(self) -> datetime:
        return datetime.combine(self.as_of, time())

    def person(self, role: str) -> Person:
        return self.persons[self.roles[role]]

    def effective_time(self, row: Row) -> datetime | None:
        """The row's own time, else its nearest ancestor's along the relation chain."""
        current: Row | None = row
        while current is not None:
            if current.time is not None:
                return current.time
            current = self.rows[current.parent] if current.parent else None
        return None

    def rows_of(self, persons: set[str]) -> set[tuple[str, tuple[str, ...]]]:
        return {k for k, r in self.rows.items() if r.owner in persons}

    def active_holds(self, moment: datetime) -> list[Hold]:
        return [h for h in self.holds if h.lifted_at is None or h.lifted_at > moment]


def e164(phone: str) -> str:
    return phonenumbers.format_number(
        phonenumbers.parse(phone, "US"), phonenumbers.PhoneNumberFormat.E164
    )


def national(phone: str) -> str:
    """`+14152301234` -> `415-230-1234`, as the channel table stores numbers."""
    digits = e164(phone)[2:]
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"


def _safe(days: float) -> float:
    while any(abs(days - b) <= 3 for b in _CUTOFF_DAYS):
        days += 5
    return days


class _Builder:
    def __init__(self, seed: int, as_of: date) -> None:
        self.rng = random.Random(seed)
        self.w = World(seed, as_of)
        self.w.records = {name: [] for name in schema.metadata.tables}
        self.phones: set[str] = set()
        self.counter: dict[str, int] = {}

    # -- helpers -------------------------------------------------------------------------------
    def ago(self, days: float) -> datetime:
        whole = int(_safe(days))
        return (
            self.w.midnight - timedelta(days=whole) + timedelta(seconds=self.rng.randint(1, 86_000))
        )

    def next(self, name: str) -> int:
        self.counter[name] = self.counter.get(name, 0) + 1
        return self.counter[name]

    def phone(self) -> str:
        while True:
            number = (
                f"+1{self.rng.choice(AREAS)}{self.rng.randint(230, 989)}"
                f"{self.rng.randint(0, 9999):04d}"
            )
            if number not in self.phones and phonenumbers.is_valid_number(
                phonenumbers.parse(number)
            ):
                self.phones.add(number)
                return number

    def email(self, first: str, last: str, capitalise: bool) -> str:
        n = self.next("email")
        local = f"{first}.{last}.{n}" if capitalise else f"{first.lower()}.{last.lower()}.{n}"
        domain = self.rng.choice(DOMAINS)
        return f"{local}@{domain.title() if capitalise else domain}"

    def add_row(
        self,
        table: str,
        values: dict[str, Any],
        owner: Person,
        parent: tuple[str, tuple[str, ...]] | None,
    ) -> tuple[str, tuple[str, ...]]:
        spec = schema.metadata.tables[table]
        key = tuple(str(values[c.name]) for c in spec.primary_key.columns)
        tcol = schema.TIME_COLUMNS[table]
        row = Row(table, key, owner.uuid, owner.org, values[tcol] if tcol else None, parent)
        self.w.rows[(table, key)] = row
        self.w.records[table].append(values)
        return (table, key)

    # -- people ----------------------------------------------------------------------------------
    def person(
        self,
        org: str,
        *,
        signed_up_days: float,
        minor: bool = False,
        email: str | None = "new",
        mobile: str | None = "new",
        role: str | None = None,
    ) -> Person:
        rng = self.rng
        first, last = rng.choice(FIRST), rng.choice(LAST)
        pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        ref = f"C-{self.next('ref:' + org):04d}"
        if email == "new":
            email = self.email(first, last, capitalise=rng.random() < 0.3)
        if mobile == "new":
            mobile = self.phone()
        p = Person(
            uuid=pid,
            org=org,
            ref_code=ref,
            full_name=f"{first} {last}",
            primary_email=email,
            mobile=mobile,
            is_minor=minor,
            national_id=f"NID{rng.randint(10**8, 10**9 - 1)}" if rng.random() < 0.7 else None,
            signed_up=self.ago(signed_up_days),
        )
        if p.national_id:
            p.secrets.add(p.national_id)
        self.w.persons[pid] = p
        if role:
            self.w.roles[role] = pid
        self.add_row(
            "people",
            {
                "person_uuid": pid,
                "org_code": org,
                "ref_code": ref,
                "full_name": p.full_name,
                "primary_email": p.primary_email,
                "mobile": p.mobile,
                "is_minor": minor,
                "national_id": p.national_id,
                "signed_up_at": p.signed_up,
            },
            p,
            None,
        )
        return p

    def channel(
        self, p: Person, *, email: str | None = None, phone: str | None = None, days: float
    ):
        cid = f"ch-{self.next('channel'):05d}"
        if email:
            p.channel_emails.append(email)
        if phone:
            p.channel_phones.append(phone)
        self.add_row(
            "person_channels",
            {
                "channel_id": cid,
                "person_uuid": p.uuid,
                "kind": "email" if email else "phone",
                "email": email,
                "phone": phone,
                "verified_at": self.ago(days),
            },
            p,
            ("people", (p.uuid,)),
        )

    def tags(self, p: Person, n: int) -> None:
        for tag in self.rng.sample(TAGS, n):
            self.add_row(
                "person_tags", {"person_uuid": p.uuid, "tag": tag}, p, ("people", (p.uuid,))
            )

    def login(self, p: Person, days: float) -> None:
        digest = "$argon2id$v=19$" + "".join(self.rng.choices("abcdef0123456789", k=40))
        answer = f"answer-{self.rng.randint(10**6, 10**7 - 1)}"
        p.secrets |= {digest, answer}
        self.add_row(
            "portal_logins",
            {
                "login_id": self.next("login"),
                "person_uuid": p.uuid,
                "username": f"user{self.next('username')}",
                "pass_digest": digest,
                "recovery_answer": answer,
                "created_at": self.ago(days),
            },
            p,
            ("people", (p.uuid,)),
        )

    def deal(self, p: Person, days: float, notes: list[tuple[float, int]]) -> None:
        """A deal opened `days` ago with notes (days ago, attachments) under it: depth 1 to 3."""
        deal_id = 1000 + self.next("deal")
        deal = self.add_row(
            "deals",
            {
                "deal_id": deal_id,
                "person_uuid": p.uuid,
                "org_code": p.org,
                "title": f"{self.rng.choice(['Lease', 'Purchase', 'Membership', 'Viewing'])} "
                f"#{deal_id}",
                "amount_cents": self.rng.randint(1_000, 9_000_000),
                "opened_at": self.ago(days),
            },
            p,
            ("people", (p.uuid,)),
        )
        for note_days, attachments in notes:
            note_id = f"n-{self.next('note'):05d}"
            note = self.add_row(
                "deal_notes",
                {
                    "note_id": note_id,
                    "deal_id": deal_id,
                    "body": self.rng.choice(
                        ["Called back.", "Sent the quote.", "Prefers evenings.", "Wants a visit."]
                    ),
                    "written_at": self.ago(min(note_days, days)),
                },
                p,
                deal,
            )
            for _ in range(attachments):
                self.add_row(
                    "note_attachments",
                    {
                        "attachment_key": f"att/{self.rng.getrandbits(64):016x}",
                        "note_id": note_id,
                        "filename": self.rng.choice(["id-scan.pdf", "quote.pdf", "photo.jpg"]),
                        "size_bytes": self.rng.randint(1_000, 900_000),
                    },
                    p,
                    note,
                )

    def generic(self, org: str) -> Person:
        """An ordinary adult, active within the last ~200 days."""
        rng = self.rng
        signed = rng.uniform(40, 1_400)
        p = self.person(org, signed_up_days=signed)
        for _ in range(rng.randint(0, 2)):
            verified = rng.uniform(1, min(200, signed - 1))
            if rng.random() < 0.5:
                first, last = p.full_name.split()
                self.channel(p, email=self.email(first, last, capitalise=False), days=verified)
            else:
                self.channel(p, phone=national(self.phone()), days=verified)
        if not p.channel_emails and not p.channel_phones:  # keep everyone recently active
            self.channel(p, phone=national(self.phone()), days=rng.uniform(1, min(200, signed - 1)))
        self.tags(p, rng.randint(0, 3))
        if rng.random() < 0.4:
            self.login(p, rng.uniform(1, signed))
        for _ in range(rng.randint(0, 2)):
            opened = rng.uniform(1, signed)
            notes = [(rng.uniform(1, opened), rng.randint(0, 2)) for _ in range(rng.randint(0, 2))]
            self.deal(p, opened, notes)
        return p


def _plant(b: _Builder) -> None:
    """The people every test needs, by role."""
    # twins: the same e-mail and client-side id in tenants "01" and "1" (R6: never crossed)
    twin_email = "Sam.Twin@Example.test"
    t01 = b.person("01", signed_up_days=300, email=twin_email, role="twin_01")
    b.channel(t01, phone=national(b.phone()), days=30)
    b.tags(t01, 2)
    b.deal(t01, 200, [(150, 2), (20, 1)])
    b.login(t01, 250)
    t1 = b.person("1", signed_up_days=280, email=twin_email.lower(), role="twin_1")
    b.channel(t1, email="sam.other@example.org", days=10)
    b.tags(t1, 2)
    b.deal(t1, 100, [(90, 1)])

    # a consumer with rows at depth 3, found by the E.164 phone on the parent table
    deep = b.person("acme-east", signed_up_days=700, role="deep")
    b.channel(deep, email="deep.second@corp.internal", days=60)
    b.channel(deep, phone=national(b.phone()), days=15)
    b.tags(deep, 3)
    b.login(deep, 500)
    b.deal(deep, 600, [(500, 2), (100, 1)])
    b.deal(deep, 90, [(30, 2)])

    # a consumer whose phone exists only in national form on the child table
    chan = b.person(UUID_TENANT, signed_up_days=400, mobile=None, role="channel_phone")
    b.channel(chan, phone=national(b.phone()), days=40)
    b.deal(chan, 300, [(200, 1)])
    b.tags(chan, 1)

    # the unicode tenant: a special-use domain, and a phone twin in another tenant
    uni = b.person(
        UNICODE_TENANT, signed_up_days=350, email="jörg.ops@büro.internal", role="unicode"
    )
    uni_twin = b.person("acme-east", signed_up_days=320, mobile=uni.mobile, role="unicode_twin")
    b.channel(uni, email="joerg.ops@example.test", days=25)
    b.deal(uni, 200, [(100, 1)])
    b.tags(uni, 1)
    b.channel(uni_twin, email="twin.of.joerg@example.org", days=5)
    b.deal(uni_twin, 150, [(50, 1)])

    # a consumer under an active legal hold (R19): old enough that retention would expire them
    held = b.person("acme-east", signed_up_days=1_500, role="held")
    b.channel(held, phone=national(b.phone()), days=1_400)
    b.deal(held, 1_300, [(1_250, 1)])
    b.tags(held, 1)
    # a consumer whose hold was lifted: erasable again
    lifted = b.person(UNICODE_TENANT, signed_up_days=500, role="hold_lifted")
    b.channel(lifted, email="lifted.person@home.local", days=45)
    b.deal(lifted, 400, [(350, 1)])

    # access subjects: everything (GDPR) in the UUID tenant; a CCPA window in "01"
    acc = b.person(UUID_TENANT, signed_up_days=900, role="access_gdpr")
    b.channel(acc, email="acc.gdpr.second@example.org", days=100)
    b.channel(acc, phone=national(b.phone()), days=800)
    b.tags(acc, 3)
    b.login(acc, 850)
    b.deal(acc, 850, [(600, 2), (10, 1)])
    b.deal(acc, 40, [(5, 1)])
    ccpa = b.person("01", signed_up_days=800, role="access_ccpa")
    b.channel(ccpa, email="ccpa.window@example.test", days=700)
    b.channel(ccpa, phone=national(b.phone()), days=20)
    b.login(ccpa, 600)
    b.tags(ccpa, 2)
    b.deal(ccpa, 700, [(650, 1), (300, 2)])
    b.deal(ccpa, 100, [(50, 1)])

    # the hostile case: an identity the eraser cannot see (planted by the test at run time)
    hostile = b.person("1", signed_up_days=200, role="hostile")
    b.channel(hostile, email="hostile.second@example.org", days=10)
    b.deal(hostile, 100, [(60, 1)])

    # retention: minors before and after 60 days, an inactive adult, old deals and notes
    m_old = b.person(UNICODE_TENANT, signed_up_days=200, minor=True, role="minor_old")
    b.deal(m_old, 100, [(50, 1)])
    b.tags(m_old, 1)
    m_new = b.person("1", signed_up_days=20, minor=True, role="minor_new")
    b.tags(m_new, 1)
    inactive = b.person("01", signed_up_days=1_600, role="inactive")
    b.channel(inactive, email="gone.quiet@example.org", days=1_500)
    b.login(inactive, 1_500)
    b.deal(inactive, 1_200, [(1_150, 1)])
    old = b.person("acme-east", signed_up_days=1_300, role="old_deals")
    b.channel(old, phone=national(b.phone()), days=50)
    b.deal(old, 1_200, [(1_190, 2), (1_150, 1)])
    b.deal(old, 900, [(800, 2), (100, 1)])


# R10 fixtures (issue 16): values of R10 kinds where the data map does not look, for the CCPA
# access subject. None uses the seeded RNG, so the rest of the world is unchanged.
R10_NOTE = "Caller gave SSN 219-09-9999 and card 4539 1488 0343 6467 for the deposit."
R10_LOG = {
    "msg": "retry: ssn 078-05-1120 card 5425233430109903",
    "customer": {"ssn": "078051120"},  # unmapped keys, nested
    "bank": {"routing_number": "021000021", "account_number": "000123456789"},
}
R10_VALUES = {
    "219-09-9999",
    "4539 1488 0343 6467",
    "078-05-1120",
    "5425233430109903",
    "078051120",
    "021000021",
    "000123456789",
}
R10_STATEMENTS = {
    "[withheld: social security number held]",
    "[withheld: payment card number held]",
    "[withheld: bank routing number held]",
    "[withheld: bank account number held]",
}
# inside the CCPA subject's 12-month window, a log day, and not one the data inventory samples
# for drift (the oldest and the newest two objects): the unmapped keys are planted on purpose
R10_DAYS = 20


def _r10(b: _Builder) -> None:
    """A deal note (a mapped free-text column, so every backup snapshot's row too) and a log
    line (free text and unmapped JSON keys) of the CCPA access subject."""
    w = b.w
    p = w.person("access_ccpa")
    deal = max(d["deal_id"] for d in w.records["deals"] if d["person_uuid"] == p.uuid)
    when = w.midnight - timedelta(days=R10_DAYS) + timedelta(hours=10)
    b.add_row(
        "deal_notes",
        {"note_id": "n-r10", "deal_id": deal, "body": R10_NOTE, "written_at": when},
        p,
        ("deals", (str(deal),)),
    )
    p.secrets |= R10_VALUES
    ts = when.replace(tzinfo=UTC) + timedelta(minutes=5)
    record = {
        "ts": _iso(ts),
        "org": {"code": p.org},
        "event": "payment.retry",
        "actor": {"uuid": p.uuid, "email": p.primary_email},
        **R10_LOG,
    }
    day = (w.as_of - timedelta(days=R10_DAYS)).strftime(STORE_PARTITION[ACTIVITY])
    key = f"{STORE_PREFIX[ACTIVITY]}{day}part-r10.jsonl.gz"
    raw = _dump(record)
    w.lines.append(
        Line(ACTIVITY, LOG_BUCKET, key, 0, raw, p.org, ts, frozenset({p.uuid}), frozenset())
    )
    w.objects[(LOG_BUCKET, key)] = gzip.compress(raw + b"\n", mtime=0)
    # G2: the GDPR access subject holds a national id, which its bundle must show (its own row)
    g = w.person("access_gdpr")
    if not g.national_id:
        g.national_id = "NID900000001"
        g.secrets.add(g.national_id)
        row = next(r for r in w.records["people"] if r["person_uuid"] == g.uuid)
        row["national_id"] = g.national_id


def _holds(b: _Builder) -> None:
    w = b.w
    w.holds = [
        Hold("acme-east", w.roles["held"], "all", None),
        Hold(UNICODE_TENANT, w.roles["hold_lifted"], "all", w.midnight - timedelta(days=30)),
    ]
    for n, h in enumerate(w.holds, start=1):
        w.records["litigation_holds"].append(
            {
                "hold_no": n,
                "org": h.org,
                "subject_uuid": h.subject,
                "applies_to": h.scope,
                "why": "pending litigation" if h.lifted_at is None else "settled",
                "basis": "legal_claims",
                "lifted_at": h.lifted_at,
            }
        )


# -- logs ------------------------------------------------------------------------------------------
def _iso(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat() + "Z"


def _dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode()


def _iban(rng: random.Random) -> str:
    return "DE" + "".join(rng.choices("0123456789", k=20))


def _logs(b: _Builder) -> None:
    w, rng = b.w, b.rng
    by_org: dict[str, list[Person]] = {}
    for p in w.persons.values():
        by_org.setdefault(p.org, []).append(p)
    orgs = [o for o, *_ in ORGS]
    stars = [
        w.roles[r]
        for r in (
            "twin_01",
            "twin_1",
            "deep",
            "channel_phone",
            "unicode",
            "unicode_twin",
            "held",
            "hold_lifted",
            "access_gdpr",
            "access_ccpa",
            "hostile",
        )
    ]
    for n, days in enumerate(LOG_DAYS):
        day = w.as_of - timedelta(days=days)
        base = datetime.combine(day, time(), UTC)
        for store in (ACTIVITY, DELIVERY):
            key = f"{STORE_PREFIX[store]}{day.strftime(STORE_PARTITION[store])}part-0000.jsonl.gz"
            actors = [w.persons[stars[(n * 2 + i) % len(stars)]] for i in range(3)]
            actors += [rng.choice(by_org[orgs[(n + i) % len(orgs)]]) for i in range(6)]
            # the twins always share an object: the same e-mail in two tenants, side by side
            actors.insert(1, w.person("twin_1" if n % 2 == 0 else "twin_01"))
            raw_lines: list[Line] = []
            for i, actor in enumerate(actors):
                ts = base + timedelta(seconds=3_600 + i * 1_800 + rng.randint(0, 600))
                full = i == 0  # the first line of every object carries every mapped path
                if store == ACTIVITY:
                    raw, owners, secrets = _activity_line(rng, by_org, actor, ts, full)
                else:
                    raw, owners, secrets = _delivery_line(rng, by_org, actor, ts, full)
                raw_lines.append(
                    Line(store, LOG_BUCKET, key, i, raw, actor.org, ts, owners, secrets)
                )
            w.lines.extend(raw_lines)
            body = b"".join(line.raw + b"\n" for line in raw_lines)
            w.objects[(LOG_BUCKET, key)] = gzip.compress(body, mtime=0)


def _others(rng: random.Random, by_org: dict[str, list[Person]], actor: Person) -> list[Person]:
    pool = [p for p in by_org[actor.org] if p.uuid != actor.uuid and p.primary_email]
    return rng.sample(pool, min(len(pool), rng.randint(1, 2)))


def _some_email(rng: random.Random, p: Person) -> str | None:
    choices = [e for e in [p.primary_email, *p.channel_emails] if e]
    if not choices:
        return None
    chosen = rng.choice(choices)
    return chosen.upper() if rng.random() < 0.2 else chosen  # logs keep whatever case came in


def _activity_line(rng, by_org, actor: Person, ts: datetime, full: bool):
    """`{"org": {"code"}, "actor": {...}, "recipients": [...], "meta.v2": {...}}`: nested."""
    owners = {actor.uuid}
    secrets: set[str] = set()
    record: dict[str, Any] = {
        "ts": _iso(ts),
        "org": {"code": actor.org},
        "event": rng.choice(EVENTS),
        "actor": {"uuid": actor.uuid},
    }
    email = _some_email(rng, actor)
    if email:
        record["actor"]["email"] = email
    recipients = []
    for other in _others(rng, by_org, actor):
        owners.add(other.uuid)
        recipients.append({"email": _some_email(rng, other), "name": other.full_name})
    record["recipients"] = recipients
    record["meta.v2"] = {
        "ip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.7",
        "agent": rng.choice(AGENTS),
    }
    phone = actor.mobile or (e164(actor.channel_phones[0]) if actor.channel_phones else None)
    if phone and (full or rng.random() < 0.4):
        record["sms"] = {"to": phone}
    if full or rng.random() < 0.3:
        iban = _iban(rng)
        record["payment"] = {"iban": iban, "amount": rng.randint(100, 99_999)}
        secrets.add(iban)
        actor.secrets.add(iban)
    return _dump(record), frozenset(owners), frozenset(secrets)


def _delivery_line(rng, by_org, actor: Person, ts: datetime, full: bool):
    """`{"tenant": ..., "to": [e-mails], "sms": {"to": phone}, "net": {"remote_ip": ...}}`."""
    owners = {actor.uuid}
    to = [e for e in [_some_email(rng, actor)] if e]
    for other in _others(rng, by_org, actor)[:1]:
        owners.add(other.uuid)
        to.append(_some_email(rng, other))
    record: dict[str, Any] = {
        "at": _iso(ts),
        "tenant": actor.org,
        "msg": f"m-{rng.getrandbits(32):08x}",
        "to": to,
    }
    phone = actor.mobile or (e164(actor.channel_phones[0]) if actor.channel_phones else None)
    if phone and (full or rng.random() < 0.5):
        record["sms"] = {"to": phone}
    record["net"] = {"remote_ip": f"192.0.2.{rng.randint(1, 254)}"}
    record["status"] = rng.choice(["delivered", "deferred", "bounced"])
    return _dump(record), frozenset(owners), frozenset()


# -- backups ---------------------------------------------------------------------------------------
def _csv_text(value: Any) -> str:
    """PostgreSQL COPY CSV text forms: NULL empty, booleans t/f, timestamps with a space."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _backups(b: _Builder) -> None:
    w = b.w
    for days in BACKUP_DAYS:
        day = (w.as_of - timedelta(days=days)).isoformat()
        for name, table in schema.metadata.tables.items():
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            cols = [c.name for c in table.columns]
            writer.writerow(cols)
            for rec in w.records[name]:
                writer.writerow([_csv_text(rec[c]) for c in cols])
            key = f"{STORE_PREFIX[BACKUPS]}{day}/{name}.csv.gz"
            w.objects[(BACKUP_BUCKET, key)] = gzip.compress(buf.getvalue().encode(), mtime=0)


def build(as_of: date, seed: int = SEED) -> World:
    """The whole world in memory, with its ground truth; no I/O."""
    b = _Builder(seed, as_of)
    for code, name, active, sector in ORGS:
        b.w.records["orgs"].append(
            {
                "org_code": code,
                "display_name": name,
                "is_active": active,
                "sector": sector,
                "ended_on": None if active else as_of - timedelta(days=400),
            }
        )
    _plant(b)
    for code, *_ in ORGS:
        for _ in range(8 if code != INACTIVE_TENANT else 3):
            b.generic(code)
    _holds(b)
    _logs(b)
    _r10(b)
    _backups(b)
    return b.w


def seed_sql(engine: sa.Engine, world: World) -> None:
    """Create the CRM's tables and insert the world's rows (parents first)."""
    schema.create(engine)
    with engine.begin() as conn:
        for table in schema.metadata.sorted_tables:
            if world.records[table.name]:
                conn.execute(sa.insert(table), world.records[table.name])


def seed_objects(s3: Any, world: World) -> None:
    """Upload the logs and backups (buckets versioned, as erasure must handle old versions)."""
    for bucket in sorted({b for b, _ in world.objects}):
        ensure_bucket(s3, bucket)
    for (bucket, key), body in sorted(world.objects.items()):
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def seed(engine: sa.Engine, s3: Any, as_of: date, seed: int = SEED) -> World:
    """Build the world, write its rows and objects, return its ground truth."""
    world = build(as_of, seed)
    seed_sql(engine, world)
    seed_objects(s3, world)
    return world


def ensure_bucket(s3: Any, bucket: str) -> None:
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
