"""The compliance state database: requests, batches, tombstones and sub-processor notices.

Its own SQLAlchemy engine (Airflow connection `compliance_db`): SQLite in the demo, PostgreSQL in
production; everything here is SQLAlchemy Core and runs on both. The audit ledger lives in the
same database (`compliance.core.ledger`) and `create_state_schema` creates it too.

No personal data is stored here, ever: identities appear only as keyed hashes
(`compliance.core.hashing.keyed_hash`), which is the "minimal record" R20 allows. Each function is
one
short transaction and safe to rerun: inserts are insert-if-absent, status changes converge, a
batch's plan is written once. Reruns therefore converge instead of duplicating. Functions that
take `bind` accept a Connection too: then they run inside the caller's transaction, so steps
that must happen together (a batch and the requests pointing at it; ledger entries, completed
requests and the finished batch) commit together or not at all.

Request statuses (deliberately few; see style.md on Fides' sixteen):
- `open`: accepted from the business (verified, R5) and due for action; `response_due` (R3) and,
  after a valid extension, `extended_due` (R4) are the deadlines.
- `deferred`: accepted but action is postponed for a recorded reason (`reason_code`), e.g. a
  law-enforcement `legal_hold` (R19); it still counts for dedupe and keeps its deadlines.
- `completed`: done (erasure or access delivery finished); `completed_at` is the response date
  (R22) and never moves on a rerun.
- `rejected`: refused at intake or later, with a `reason_code` (R5 unverified, R6 direct request,
  duplicate, malformed...; the basis R21/R14 ask for) and `completed_at`, the response date. A
  document refused at intake is logged with the type, receipt time and jurisdiction it gives;
  what it does not give readably is `unknown` (type, jurisdiction) or null (`received_at`),
  never guessed (R22). The R23 metrics tell invalid submissions from denials by `reason_code`.
- `partial`: erased except what a scoped legal hold keeps (R16.2, R19, R21); `reason_code` is
  the hold's exception code. Re-examined on every run: when the hold ends the request is planned
  again (`open`), the rest is erased and it completes. It counts for dedupe.
Transitions: open <-> deferred, open <-> partial, deferred|partial -> open, open|deferred|partial
-> completed|rejected; completed and rejected are terminal. The table doubles as the
per-tenant request log R22 asks for (request date =
`received_at`, nature = `type`, manner = `source`, response date = `completed_at`, response
nature = `status`, denial basis = `reason_code`).
"""

from __future__ import annotations

import calendar
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.types import TypeDecorator

STATE_CONN_ID = "compliance_db"

REQUEST_TYPES = ("delete", "access")
JURISDICTIONS = ("ccpa", "gdpr")
STATUSES = ("open", "deferred", "partial", "completed", "rejected")
BATCH_KINDS = ("delete", "access", "retention")
BATCH_STATUSES = ("planned", "done")
NOTICE_STATUSES = (
    "pending",  # queued in the outbox, not tried yet (compliance.deletion.outbox)
    "sent",
    "acknowledged",
    "failed",
    "not_configured",
    "given_up",  # the give-up time passed unacknowledged (R16.3; alerted, ledgered)
    "exempt",  # R16.4 recipient not told: impossible or disproportionate, justification kept
)
# Notices that are finished: never sent again (`compliance.deletion.outbox`).
NOTICE_FINAL = ("acknowledged", "given_up", "exempt")

# What the request log records for a rejected document whose type or jurisdiction could not
# be read from it (R22): never a guess from the S3 key or a default (issue 15).
UNKNOWN = "unknown"

# Statuses of requests still being worked on. Only these make a new request with the same
# identities a duplicate: a consumer whose data was erased and collected again may ask again,
# and that is a new request (R16, R20); a finished access request is R7's repeat, flagged by
# the access run, not refused. Any non-terminal status added later counts too.
DEDUPE_STATUSES = tuple(s for s in STATUSES if s not in ("completed", "rejected"))
# Statuses of requests accepted from the business (not refused): they keep their request id
# (a request id is processed once) and count for R7's "twice in 12 months".
ACCEPTED_STATUSES = tuple(s for s in STATUSES if s != "rejected")

_TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"deferred", "partial", "completed", "rejected"}),
    "deferred": frozenset({"open", "completed", "rejected"}),
    "partial": frozenset({"open", "deferred", "completed", "rejected"}),
    "completed": frozenset(),
    "rejected": frozenset(),
}

# R3/R4 arithmetic (CCPA). R3 counts the day of receipt as day 1, so the 45th day is
# received_on + 44d; the extension runs to day 90, i.e. received_on + 89d.
CCPA_FIRST_PERIOD_LAST_DAY = timedelta(days=44)
CCPA_EXTENDED_LAST_DAY = timedelta(days=89)

_TOKEN = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_IN_CHUNK = 500


# --------------------------------------------------------------------------- errors


class StateError(Exception):
    """A refused state change; `reason_code` is machine-readable, the message is for people."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message


class ExtensionRefused(StateError):
    """R4: the extension is invalid (second one, late or missing notice, no reason...)."""


class TransitionRefused(StateError):
    """The status change is not allowed (a terminal status, or a missing reason code)."""


# --------------------------------------------------------------------------- types


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC on every backend, returned timezone-aware (UTC).

    SQLite has no time zones and PostgreSQL `timestamptz` would round-trip differently, so one
    convention for both: aware values are converted to UTC, naive ones are taken as UTC.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return to_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime (naive input is taken to be UTC already)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite only autoincrements INTEGER
# Tenant (client) ids as text: the CRM's may be integers, text or UUIDs (any-CRM, issue 14).
CLIENT_ID = String(255)

# --------------------------------------------------------------------------- tables

metadata = MetaData()

cj_requests = Table(
    "cj_requests",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("client_id", CLIENT_ID, nullable=False),
    Column("request_id", String(64), nullable=False),  # the business's own id
    Column("type", String(16), nullable=False),
    Column("jurisdiction", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason_code", String(64)),
    # R1: the business's receipt. Null only for a rejected document that gave no readable
    # receipt time (R22: recorded as unknown, never guessed); accepted requests always have it.
    Column("received_at", UTCDateTime),
    # Day 1 of the deadlines as intake computed it (`intake.received_day`: the earlier of the
    # business's local day and the UTC day); the offset is gone once received_at is UTC.
    Column("received_on", Date),
    Column("accepted_at", UTCDateTime),
    Column("ack_due", Date),  # R2
    Column("response_due", Date),  # R3 / G1
    Column("extension_notice_at", UTCDateTime),  # R4
    Column("extension_reason", String(500)),
    Column("extended_due", Date),
    Column("completed_at", UTCDateTime),
    Column("batch_id", String(64)),
    Column("source", String(512), nullable=False),  # S3 key of the accepted document, or "ui"
    Column("subject_hash", String(64)),  # keyed hash of the first identity (R7 repeats)
    Column("look_back", String(16)),  # R9 scope chosen by the consumer (access requests)
    # Records R1, R5 and R24 ask for, as intake checked them (issue 15): codes, times and keyed
    # hashes only, never a name or an identity (`compliance.requests.request_records`).
    Column("forwarded_at", UTCDateTime),  # R1: when the business forwarded it to us
    Column("verification_method", String(64)),  # R5: a method code ("email_link"), or "other"
    Column("verified_at", UTCDateTime),  # R5
    Column("verified_by_hash", String(64)),  # R5: keyed hash of who verified
    Column("guardian_method", String(64)),  # R24: the parent's or guardian's verification
    Column("guardian_verified_at", UTCDateTime),
    Column("guardian_verified_by_hash", String(64)),
    # Keyed refs of earlier requests of the same type for the same identities (a repeat
    # deletion after data was collected again, R20; R7 repeats), space-separated.
    Column("previous_requests", Text),
    UniqueConstraint("client_id", "request_id", "type", name="uq_cj_requests_client_request"),
)
Index("ix_cj_requests_status_type", cj_requests.c.status, cj_requests.c.type)
Index("ix_cj_requests_subject", cj_requests.c.client_id, cj_requests.c.subject_hash)

cj_request_keys = Table(
    "cj_request_keys",
    metadata,
    Column("request_pk", ID, ForeignKey("cj_requests.id"), primary_key=True),
    Column("key", String(128), primary_key=True),  # keyed dedupe hash, computed by intake
)
Index("ix_cj_request_keys_key", cj_request_keys.c.key)

cj_batches = Table(
    "cj_batches",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("finished_at", UTCDateTime),
)

cj_batch_plan = Table(
    "cj_batch_plan",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("batch_id", String(64), ForeignKey("cj_batches.batch_id"), nullable=False),
    Column("request_pk", ID, ForeignKey("cj_requests.id")),  # null for retention sweeps
    Column("system", String(64), nullable=False),
    Column("target", String(256), nullable=False),  # table, or store/shard
    Column("planned", BigInteger, nullable=False),
)
Index("ix_cj_batch_plan_batch", cj_batch_plan.c.batch_id)

# Lines erased per log object, request and batch, written just before the object is replaced:
# a crash after the replacement cannot lose the count (the rerun finds the object clean).
cj_batch_lines = Table(
    "cj_batch_lines",
    metadata,
    Column("batch_id", String(64), ForeignKey("cj_batches.batch_id"), primary_key=True),
    Column("store", String(64), primary_key=True),
    Column("object_key", String(1024), primary_key=True),
    Column("request_pk", ID, ForeignKey("cj_requests.id"), primary_key=True),
    Column("lines", BigInteger, nullable=False),
)

cj_tombstones = Table(
    "cj_tombstones",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("system", String(64), nullable=False),
    Column("client_id", CLIENT_ID, nullable=False),
    Column("kind", String(32), nullable=False),  # identity type: email, phone, external_id...
    Column("hash", String(64), nullable=False),  # keyed_hash(key, kind, value)
    Column("request_pk", ID, ForeignKey("cj_requests.id")),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("system", "client_id", "kind", "hash", name="uq_cj_tombstones"),
)

cj_notices = Table(
    "cj_notices",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("request_pk", ID, ForeignKey("cj_requests.id"), nullable=False),
    Column("subprocessor", String(64), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error_kind", String(64)),  # an error class/code, never a message with PII
    Column("sent_at", UTCDateTime),
    Column("acked_at", UTCDateTime),
    # The outbox (compliance.deletion.outbox, R16.3/R16.4); nullable so rows from before it still
    # load.
    Column("kind", String(16)),  # subprocessor | recipient (None: a sub-processor, before)
    Column("queued_at", UTCDateTime),  # the give-up and the alert age count from here
    Column("last_attempt_at", UTCDateTime),
    Column("next_attempt_at", UTCDateTime),  # exponential backoff; None when final
    Column("given_up_at", UTCDateTime),
    Column("reported_status", String(16)),  # the status the request's receipt last showed
    UniqueConstraint("request_pk", "subprocessor", name="uq_cj_notices"),
)


def create_state_schema(engine: Engine) -> None:
    """Create every `cj_` table (the ledger's too) if missing; safe to call on every run."""
    from compliance.core import ledger  # registers cj_ledger on `metadata`; imports this module

    metadata.create_all(engine, checkfirst=True)
    _add_missing_columns(engine)
    _client_ids_as_text(engine)
    _received_at_nullable(engine)
    ledger.seed_lock_row(engine)


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a newer release declares to a state DB created before them
    (`create_all` creates missing tables only). Idempotent: only absent columns are added, and
    only nullable ones without a server default, so old rows load unchanged. Safe when several
    tasks start at once: PostgreSQL adds `IF NOT EXISTS`, and on SQLite a concurrent task having
    added the column first is not an error."""
    inspector = inspect(engine)
    exists = "IF NOT EXISTS " if engine.dialect.name == "postgresql" else ""
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for col in table.columns:
            if col.name in have or not col.nullable or col.primary_key:
                continue
            kind = col.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.execute(
                        text(f'ALTER TABLE {table.name} ADD COLUMN {exists}"{col.name}" {kind}')
                    )
            except OperationalError as exc:
                if "duplicate column" not in str(exc).lower():
                    raise


def _client_ids_as_text(engine: Engine) -> None:
    """Upgrade a state DB created when client ids were integers: PostgreSQL converts the column
    in place (`1` becomes `'1'`). SQLite compares a text id with an integer-affinity column's
    numbers as equal, and every read goes through `client_text`, so it works as it is."""
    if engine.dialect.name != "postgresql":
        return
    inspector = inspect(engine)
    for table in (cj_requests, cj_tombstones):
        kinds = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
        if isinstance(kinds.get("client_id"), Integer):
            with engine.begin() as conn:
                conn.execute(
                    text(
                        f"ALTER TABLE {table.name} ALTER COLUMN client_id "
                        "TYPE VARCHAR(255) USING client_id::text"
                    )
                )


def _received_at_nullable(engine: Engine) -> None:
    """`cj_requests.received_at` became nullable (issue 15: a rejected document whose receipt
    time cannot be read is logged with an unknown one, R22). PostgreSQL drops the constraint in
    place; SQLite cannot, so the table is rebuilt under its own name (SQLite's documented
    12-step procedure, foreign keys off for the swap), rows and ids kept."""
    columns = {c["name"]: c for c in inspect(engine).get_columns("cj_requests")}
    if columns["received_at"]["nullable"]:
        return
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE cj_requests ALTER COLUMN received_at DROP NOT NULL"))
        return
    from sqlalchemy.schema import CreateIndex, CreateTable

    names = ", ".join(f'"{c.name}"' for c in cj_requests.columns if c.name in columns)
    create = str(CreateTable(cj_requests).compile(dialect=engine.dialect)).replace(
        "CREATE TABLE cj_requests", "CREATE TABLE cj_requests_rebuilt", 1
    )
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction, as required
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # one writer: a concurrent task waits
            info = conn.exec_driver_sql("PRAGMA table_info(cj_requests)").all()
            if any(r[1] == "received_at" and not r[3] for r in info):  # done meanwhile
                conn.exec_driver_sql("COMMIT")
                return
            conn.exec_driver_sql(create)
            conn.exec_driver_sql(
                f"INSERT INTO cj_requests_rebuilt ({names}) SELECT {names} FROM cj_requests"
            )
            conn.exec_driver_sql("DROP TABLE cj_requests")
            conn.exec_driver_sql("ALTER TABLE cj_requests_rebuilt RENAME TO cj_requests")
            for index in cj_requests.indexes:
                conn.exec_driver_sql(str(CreateIndex(index).compile(dialect=engine.dialect)))
            if conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                raise RuntimeError("cj_requests rebuild broke a foreign key; rolled back")
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")


def client_text(value: object) -> str:
    """A client id as the state DB keeps it: text (`7` -> `"7"`, a UUID in its canonical form)."""
    return value if isinstance(value, str) else str(value)


@contextmanager
def transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A new transaction for an engine; a connection is already in the caller's, used as is."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


def insert_if_absent(conn: Connection, table: Table) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the two dialects we support."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - guarded by tests on both supported backends
        raise NotImplementedError(f"state database dialect {conn.dialect.name!r}")
    return insert(table).on_conflict_do_nothing()


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class NewRequest:
    """A request as intake accepts (or rejects) it; `keys` are its keyed dedupe hashes."""

    client_id: str  # the tenant id as text (an int is accepted and converted)
    request_id: str
    type: str
    jurisdiction: str
    received_at: datetime | None  # None only for a rejected document without one (R22)
    source: str
    status: str = "open"
    reason_code: str | None = None
    received_on: date | None = None
    accepted_at: datetime | None = None  # when intake registered it (the watchdog's "new")
    ack_due: date | None = None
    response_due: date | None = None
    subject_hash: str | None = None
    look_back: str | None = None
    forwarded_at: datetime | None = None
    verification_method: str | None = None
    verified_at: datetime | None = None
    verified_by_hash: str | None = None
    guardian_method: str | None = None
    guardian_verified_at: datetime | None = None
    guardian_verified_by_hash: str | None = None
    previous_requests: str | None = None
    completed_at: datetime | None = None  # a refusal at intake: the response date (R22)
    keys: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "client_id", client_text(self.client_id))
        _check_choice("status", self.status, STATUSES)
        # A rejected document may not say what it is (R22): `unknown`, never a guess.
        rejected = self.status == "rejected"
        _check_choice("type", self.type, (*REQUEST_TYPES, *((UNKNOWN,) if rejected else ())))
        _check_choice(
            "jurisdiction", self.jurisdiction, (*JURISDICTIONS, *((UNKNOWN,) if rejected else ()))
        )
        if self.received_at is None and not rejected:
            raise ValueError("received_at is required (R1); only a refusal may lack it")
        if not self.request_id or len(self.request_id) > 64:
            raise ValueError("request_id must be 1..64 characters")
        if self.status in {"rejected", "deferred", "partial"} and not self.reason_code:
            raise ValueError(f"a {self.status} request needs a reason_code")


@dataclass(frozen=True)
class RequestRow:
    id: int
    client_id: str
    request_id: str
    type: str
    jurisdiction: str
    status: str
    reason_code: str | None
    received_at: datetime  # None only on a rejected row (R22, unknown receipt)
    received_on: date | None
    accepted_at: datetime | None
    ack_due: date | None
    response_due: date | None
    extension_notice_at: datetime | None
    extension_reason: str | None
    extended_due: date | None
    completed_at: datetime | None
    batch_id: str | None
    source: str
    subject_hash: str | None
    look_back: str | None
    forwarded_at: datetime | None = None
    verification_method: str | None = None
    verified_at: datetime | None = None
    verified_by_hash: str | None = None
    guardian_method: str | None = None
    guardian_verified_at: datetime | None = None
    guardian_verified_by_hash: str | None = None
    previous_requests: str | None = None

    @property
    def receipt_day(self) -> date:
        """Day 1 of the deadlines: `received_on` if intake stored it, else the UTC day."""
        return self.received_on or self.received_at.date()

    @property
    def due(self) -> date | None:
        """The deadline in force: the extended one after a valid R4 extension."""
        return self.extended_due or self.response_due


@dataclass(frozen=True)
class PlanRow:
    """One line of a batch plan: how many rows/objects a target is planned to lose or export."""

    request_pk: int | None
    system: str
    target: str
    planned: int


@dataclass(frozen=True)
class BatchRow:
    batch_id: str
    kind: str
    created_at: datetime
    status: str
    finished_at: datetime | None


@dataclass(frozen=True)
class NoticeRow:
    request_pk: int
    subprocessor: str
    channel: str
    status: str
    attempts: int
    last_error_kind: str | None
    sent_at: datetime | None
    acked_at: datetime | None
    kind: str | None = None  # the outbox's columns (R16.3, R16.4); None on rows from before
    queued_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    given_up_at: datetime | None = None
    reported_status: str | None = None


def _row(cls: type, mapping: Mapping[str, Any]) -> Any:
    out = {f.name: mapping[f.name] for f in fields(cls)}
    if "client_id" in out and out["client_id"] is not None:
        out["client_id"] = client_text(out["client_id"])
    return cls(**out)


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------- requests

RequestKey = tuple[str, str, str]  # (client_id as text, request_id, type)


def insert_requests(
    engine: Engine, rows: Iterable[NewRequest | Mapping[str, Any]]
) -> dict[RequestKey, int]:
    """Insert requests that are not there yet; return the pk of every row, new or existing.

    First write wins: an existing (client_id, request_id, type) keeps its stored fields, so a
    rerun of intake cannot move a deadline or reopen a rejected request. Dedupe keys are added
    insert-if-absent for all rows, so a rerun converges.
    """
    reqs = [r if isinstance(r, NewRequest) else NewRequest(**r) for r in rows]
    out: dict[RequestKey, int] = {}
    if not reqs:
        return out
    t = cj_requests
    with engine.begin() as conn:  # a few statements per chunk, not a few per request
        for chunk in _chunks(reqs):
            conn.execute(
                insert_if_absent(conn, t),
                [
                    {f.name: getattr(r, f.name) for f in fields(NewRequest) if f.name != "keys"}
                    for r in chunk
                ],
            )
            wanted = list(dict.fromkeys((r.client_id, r.request_id, r.type) for r in chunk))
            q = select(t.c.client_id, t.c.request_id, t.c.type, t.c.id).where(
                tuple_(t.c.client_id, t.c.request_id, t.c.type).in_(wanted)
            )
            out.update({(client_text(c), rid, typ): pk for c, rid, typ, pk in conn.execute(q)})
            keys = {
                (out[(r.client_id, r.request_id, r.type)], key) for r in chunk for key in r.keys
            }
            if keys:
                conn.execute(
                    insert_if_absent(conn, cj_request_keys),
                    [{"request_pk": pk, "key": key} for pk, key in sorted(keys)],
                )
    return out


def existing_dedupe_keys(
    engine: Engine, keys: Iterable[str], statuses: Sequence[str] = DEDUPE_STATUSES
) -> set[str]:
    """The subset of `keys` already held by a request in `statuses` (default: the requests still
    being worked on, `DEDUPE_STATUSES`)."""
    wanted = sorted(set(keys))
    found: set[str] = set()
    with engine.connect() as conn:
        for chunk in _chunks(wanted):
            q = (
                select(cj_request_keys.c.key)
                .join(cj_requests, cj_requests.c.id == cj_request_keys.c.request_pk)
                .where(
                    cj_request_keys.c.key.in_(chunk),
                    cj_requests.c.status.in_(tuple(statuses)),
                )
            )
            found.update(conn.execute(q).scalars())
    return found


def requests_holding_keys(
    engine: Engine, keys: Iterable[str], statuses: Sequence[str] = ACCEPTED_STATUSES
) -> dict[str, list[tuple[int, RequestKey]]]:
    """key -> (pk, (client_id, request_id, type)) of every request in `statuses` holding it,
    earliest first: what a repeat request links to (R20, R7)."""
    wanted = sorted(set(keys))
    out: dict[str, list[tuple[int, RequestKey]]] = {}
    t, k = cj_requests, cj_request_keys
    with engine.connect() as conn:
        for chunk in _chunks(wanted):
            q = (
                select(k.c.key, t.c.id, t.c.client_id, t.c.request_id, t.c.type)
                .join(t, t.c.id == k.c.request_pk)
                .where(k.c.key.in_(chunk), t.c.status.in_(tuple(statuses)))
                .order_by(t.c.id)
            )
            for key, pk, client, rid, typ in conn.execute(q):
                out.setdefault(key, []).append((pk, (client_text(client), rid, typ)))
    return out


def open_requests(engine: Engine, type: str) -> list[RequestRow]:
    """Open requests of one type, earliest deadline first."""
    _check_choice("type", type, REQUEST_TYPES)
    due = func.coalesce(cj_requests.c.extended_due, cj_requests.c.response_due)
    q = (
        select(cj_requests)
        .where(cj_requests.c.status == "open", cj_requests.c.type == type)
        .order_by(due.is_(None), due, cj_requests.c.id)  # same NULL order on both backends
    )
    with engine.connect() as conn:
        return [_row(RequestRow, m) for m in conn.execute(q).mappings()]


def request_keys(engine: Engine, pks: Iterable[int]) -> dict[int, set[str]]:
    """The dedupe keys registered with each request."""
    wanted = sorted(set(pks))
    out: dict[int, set[str]] = {pk: set() for pk in wanted}
    with engine.connect() as conn:
        for chunk in _chunks(wanted):
            q = select(cj_request_keys.c.request_pk, cj_request_keys.c.key).where(
                cj_request_keys.c.request_pk.in_(chunk)
            )
            for pk, key in conn.execute(q):
                out[pk].add(key)
    return out


def actionable_requests(engine: Engine, type: str) -> list[RequestRow]:
    """Open, deferred and partial requests of one type: deferrals and partial erasures are
    re-examined on every run (R19: an ended hold releases them)."""
    _check_choice("type", type, REQUEST_TYPES)
    q = (
        select(cj_requests)
        .where(
            cj_requests.c.status.in_(("open", "deferred", "partial")), cj_requests.c.type == type
        )
        .order_by(cj_requests.c.id)
    )
    with engine.connect() as conn:
        return [_row(RequestRow, m) for m in conn.execute(q).mappings()]


def batch_requests(engine: Engine, batch_id: str) -> list[RequestRow]:
    """The requests a batch was planned for (their current status)."""
    q = select(cj_requests).where(cj_requests.c.batch_id == batch_id).order_by(cj_requests.c.id)
    with engine.connect() as conn:
        return [_row(RequestRow, m) for m in conn.execute(q).mappings()]


def get_requests(engine: Engine, pks: Iterable[int]) -> dict[int, RequestRow]:
    wanted = sorted(set(pks))
    out: dict[int, RequestRow] = {}
    with engine.connect() as conn:
        for chunk in _chunks(wanted):
            for m in conn.execute(
                select(cj_requests).where(cj_requests.c.id.in_(chunk))
            ).mappings():
                out[m["id"]] = _row(RequestRow, m)
    return out


def find_requests(engine: Engine, keys: Iterable[RequestKey]) -> dict[RequestKey, RequestRow]:
    """Requests by their natural key (client_id, request_id, type); absent ones are left out."""
    wanted = sorted({(client_text(c), rid, typ) for c, rid, typ in keys})
    out: dict[RequestKey, RequestRow] = {}
    with engine.connect() as conn:
        for chunk in _chunks(wanted):
            cond = tuple_(cj_requests.c.client_id, cj_requests.c.request_id, cj_requests.c.type)
            for m in conn.execute(select(cj_requests).where(cond.in_(list(chunk)))).mappings():
                row = _row(RequestRow, m)
                out[(row.client_id, row.request_id, row.type)] = row
    return out


def subject_request_count(
    engine: Engine, client_id: object, subject_hash: str, type: str, since: datetime
) -> int:
    """R7: how many accepted requests of `type` one consumer made since `since` (repeat flag)."""
    q = select(func.count()).where(
        cj_requests.c.client_id == client_text(client_id),
        cj_requests.c.subject_hash == subject_hash,
        cj_requests.c.type == type,
        cj_requests.c.status.in_(ACCEPTED_STATUSES),
        cj_requests.c.received_at >= to_utc(since),
    )
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def set_status(
    bind: Engine | Connection,
    pks: Iterable[int],
    status: str,
    reason_code: str | None = None,
    batch_id: str | None = None,
    completed_at: datetime | None = None,
) -> int:
    """Move requests to `status`; return how many rows changed.

    All-or-nothing: an unknown pk or a refused transition changes nothing. Reruns converge:
    a row already in a terminal status equal to `status` is left untouched (its `completed_at`
    never moves). For open/deferred rows, given `reason_code`/`batch_id` overwrite the stored
    ones. `rejected` and `deferred` need a reason code (R21: the basis of a denial).
    """
    _check_choice("status", status, STATUSES)
    if status in {"rejected", "deferred", "partial"} and not reason_code:
        raise TransitionRefused("reason_required", f"a {status} request needs a reason code")
    if reason_code is not None and not _TOKEN.match(reason_code):
        raise ValueError("reason_code must be a short lowercase code (no free text)")
    wanted = sorted(set(pks))
    if not wanted:
        return 0
    when = to_utc(completed_at) if completed_at else utcnow()
    changed = 0
    with transaction(bind) as conn:
        current: dict[int, tuple[str, datetime | None]] = {}
        for chunk in _chunks(wanted):
            q = (
                select(cj_requests.c.id, cj_requests.c.status, cj_requests.c.completed_at)
                .where(cj_requests.c.id.in_(chunk))
                .with_for_update()
            )
            current.update({pk: (st, done) for pk, st, done in conn.execute(q)})
        missing = [pk for pk in wanted if pk not in current]
        if missing:
            raise LookupError(f"unknown request pk(s): {missing[:10]}")
        for pk in wanted:
            old = current[pk][0]
            if old != status and status not in _TRANSITIONS[old]:
                raise TransitionRefused(
                    "transition_refused", f"request {pk} is {old}; it cannot become {status}"
                )
        same: dict[tuple[tuple[str, Any], ...], list[int]] = defaultdict(list)
        for pk in wanted:
            old, done = current[pk]
            if old == status and not _TRANSITIONS[old]:
                continue  # terminal and already there: a rerun
            values: dict[str, Any] = {"status": status}
            if reason_code is not None or status == "open":
                values["reason_code"] = reason_code  # reopening clears a deferral reason
            if batch_id is not None:
                values["batch_id"] = batch_id
            # The response date (R22), kept once set: a denial is a response, and so is a partial
            # erasure under a scoped hold (R23 "complied with in whole or in part"); the rest,
            # erased when the hold ends, does not move the date of that first response.
            if status in ("completed", "rejected", "partial"):
                values["completed_at"] = done or when
            same[tuple(values.items())].append(pk)
        for values_key, group in same.items():  # one UPDATE per chunk of equal changes
            for chunk in _chunks(group):
                changed += conn.execute(
                    update(cj_requests)
                    .where(cj_requests.c.id.in_(chunk))
                    .values(**dict(values_key))
                ).rowcount
    return changed


def _add_months(d: date, months: int) -> date:
    """Calendar-month arithmetic for G1: 15 Jan + 1 month = 15 Feb; 31 Jan + 1 = 28/29 Feb."""
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def extension_window(jurisdiction: str, received_on: date) -> tuple[date, date]:
    """(last day a notice may be sent, extended due date) for a request received that day.

    CCPA (R3, R4), conservative day-1 counting: the receipt day is day 1, so the first period
    ends on received_on + 44d and the extension on day 90 = received_on + 89d.
    GDPR (G1): notice within the first month; the due date moves to three months from receipt.
    """
    if jurisdiction == "gdpr":
        return _add_months(received_on, 1), _add_months(received_on, 3)
    return received_on + CCPA_FIRST_PERIOD_LAST_DAY, received_on + CCPA_EXTENDED_LAST_DAY


def record_extension(engine: Engine, pk: int, notice_at: datetime | None, reason: str) -> date:
    """Record the one extension R4 allows and return the new due date.

    Refused (ExtensionRefused) when: the notice date is missing, before receipt or after the
    45th day (received_on + 44d); the reason is blank; the request is already extended; or it
    is no longer open/deferred. Day 1 is `received_on` (as intake computed it) or else the
    UTC day of `received_at`; the notice counts by its day in the offset it carries, which
    `deadlines.extend` sets to the business's, so it is dated like receipt (R4; a UTC notice
    counts by its UTC day). The notice deadline is never
    later than the stored `response_due` (the end of the first period, R3).
    Rerunning with the same notice and reason is a no-op that returns the same date.
    """
    if notice_at is None:
        raise ExtensionRefused("notice_missing", "R4: an extension needs the date of its notice")
    notice_day = notice_at.date()  # R4: the business's local day when the offset is its own
    notice_at = to_utc(notice_at)
    reason = (reason or "").strip()
    with engine.begin() as conn:
        row = (
            conn.execute(select(cj_requests).where(cj_requests.c.id == pk).with_for_update())
            .mappings()
            .first()
        )
        if row is None:
            raise ExtensionRefused("unknown_request", f"no request with pk {pk}")
        if row["extension_notice_at"] is not None:
            if row["extension_notice_at"] == notice_at and row["extension_reason"] == reason:
                return row["extended_due"]  # a rerun of the same extension
            raise ExtensionRefused("already_extended", "R4: a request may be extended only once")
        if not reason:
            raise ExtensionRefused("reason_missing", "R4: the notice must give the reason")
        if row["status"] not in {"open", "deferred"}:
            raise ExtensionRefused("not_open", f"request {pk} is {row['status']}")
        received_on = _row(RequestRow, row).receipt_day
        last_notice_day, extended_due = extension_window(row["jurisdiction"], received_on)
        if row["response_due"] is not None:
            last_notice_day = min(last_notice_day, row["response_due"])
        if notice_day < received_on:
            raise ExtensionRefused("notice_before_receipt", "the notice predates the request")
        if notice_day > last_notice_day:
            raise ExtensionRefused(
                "notice_too_late",
                f"R4: the notice must be sent by {last_notice_day.isoformat()} "
                f"(the last day of the first period)",
            )
        conn.execute(
            update(cj_requests)
            .where(cj_requests.c.id == pk)
            .values(
                extension_notice_at=notice_at,
                extension_reason=reason,
                extended_due=extended_due,
            )
        )
    return extended_due


# --------------------------------------------------------------------------- batches


def plan_batch(
    bind: Engine | Connection,
    batch_id: str,
    kind: str,
    plan_rows: Iterable[PlanRow | Mapping[str, Any]],
    created_at: datetime | None = None,
) -> list[PlanRow]:
    """Write a batch and its plan once; return the stored plan.

    If the batch exists (a rerun after a crash) nothing is written and the plan stored the
    first time is returned, so receipts report the same planned counts however often a batch
    is retried (executions after the first find fewer rows to delete).
    """
    _check_choice("kind", kind, BATCH_KINDS)
    rows = [r if isinstance(r, PlanRow) else PlanRow(**r) for r in plan_rows]
    with transaction(bind) as conn:
        created = conn.execute(
            insert_if_absent(conn, cj_batches).values(
                batch_id=batch_id,
                kind=kind,
                created_at=to_utc(created_at) if created_at else utcnow(),
                status="planned",
            )
        ).rowcount
        if created:
            if rows:
                conn.execute(
                    cj_batch_plan.insert(),
                    [{"batch_id": batch_id, **r.__dict__} for r in rows],
                )
        else:
            stored_kind = conn.execute(
                select(cj_batches.c.kind).where(cj_batches.c.batch_id == batch_id)
            ).scalar_one()
            if stored_kind != kind:
                raise ValueError(f"batch {batch_id} exists with kind {stored_kind}, not {kind}")
        return _plan(conn, batch_id)


def _plan(conn: Connection, batch_id: str) -> list[PlanRow]:
    q = (
        select(cj_batch_plan)
        .where(cj_batch_plan.c.batch_id == batch_id)
        .order_by(cj_batch_plan.c.id)
    )
    return [_row(PlanRow, m) for m in conn.execute(q).mappings()]


def batch_plan(engine: Engine, batch_id: str) -> list[PlanRow]:
    """The plan written by `plan_batch` (empty if the batch is unknown)."""
    with engine.connect() as conn:
        return _plan(conn, batch_id)


def get_batch(engine: Engine, batch_id: str) -> BatchRow | None:
    with engine.connect() as conn:
        m = conn.execute(select(cj_batches).where(cj_batches.c.batch_id == batch_id)).mappings()
        row = m.first()
    return _row(BatchRow, row) if row else None


def finish_batch(
    bind: Engine | Connection, batch_id: str, finished_at: datetime | None = None
) -> bool:
    """Mark a batch done; True if this call did it (False on a rerun)."""
    with transaction(bind) as conn:
        if _batch_status(conn, batch_id) is None:
            raise LookupError(f"unknown batch {batch_id}")
        return bool(
            conn.execute(
                update(cj_batches)
                .where(cj_batches.c.batch_id == batch_id, cj_batches.c.status != "done")
                .values(status="done", finished_at=to_utc(finished_at) if finished_at else utcnow())
            ).rowcount
        )


def _batch_status(conn: Connection, batch_id: str) -> str | None:
    return conn.execute(
        select(cj_batches.c.status).where(cj_batches.c.batch_id == batch_id)
    ).scalar_one_or_none()


def record_lines(
    engine: Engine, batch_id: str, store: str, object_key: str, per_ref: Mapping[str, int]
) -> None:
    """Replace what one log object's rewrite erased for each request of a batch."""
    t = cj_batch_lines
    with engine.begin() as conn:
        conn.execute(
            t.delete().where(
                t.c.batch_id == batch_id, t.c.store == store, t.c.object_key == object_key
            )
        )
        rows = [
            {
                "batch_id": batch_id,
                "store": store,
                "object_key": object_key,
                "request_pk": int(ref),
                "lines": n,
            }
            for ref, n in per_ref.items()
            if n
        ]
        if rows:
            conn.execute(t.insert(), rows)


def batch_lines(engine: Engine, batch_id: str) -> dict[int, dict[str, int]]:
    """Log lines erased per request and store in a batch, over every run that worked on it."""
    t = cj_batch_lines
    q = (
        select(t.c.request_pk, t.c.store, func.sum(t.c.lines))
        .where(t.c.batch_id == batch_id)
        .group_by(t.c.request_pk, t.c.store)
    )
    out: dict[int, dict[str, int]] = {}
    with engine.connect() as conn:
        for pk, store, n in conn.execute(q):
            out.setdefault(int(pk), {})[store] = int(n)
    return out


# --------------------------------------------------------------------------- tombstones

Tombstone = tuple[str, str, str]  # (client_id as text, kind, keyed hash)


def add_tombstones(
    bind: Engine | Connection,
    system: str,
    by_request: Mapping[int | None, Iterable[Tombstone]],
    created_at: datetime | None = None,
) -> int:
    """Remember erased identities of one system (R18, R20), per request (None: no request);
    return how many were new.

    Only keyed hashes are stored: enough to re-apply the deletion when a backup is restored,
    useless for anything else. Insert-if-absent on (system, client_id, kind, hash); a tombstone
    two requests share keeps the first one's link. A batch's tombstones take a few statements.
    """
    when = to_utc(created_at) if created_at else utcnow()
    first: dict[Tombstone, int | None] = {}
    for pk, stones in by_request.items():
        for c, k, h in stones:
            first.setdefault((client_text(c), k, h), pk)
    t = cj_tombstones
    with transaction(bind) as conn:
        held: set[Tombstone] = set()
        for chunk in _chunks(list(first)):
            q = select(t.c.client_id, t.c.kind, t.c.hash).where(
                t.c.system == system, tuple_(t.c.client_id, t.c.kind, t.c.hash).in_(chunk)
            )
            held.update((client_text(c), k, h) for c, k, h in conn.execute(q))
        new = [stone for stone in first if stone not in held]
        for chunk in _chunks(new):
            conn.execute(
                insert_if_absent(conn, t),
                [
                    {"system": system, "client_id": c, "kind": k, "hash": h,
                     "request_pk": first[(c, k, h)], "created_at": when}
                    for c, k, h in chunk
                ],
            )  # fmt: skip
    return len(new)


def tombstone_hashes(
    engine: Engine, system: str, client_id: object | None = None
) -> set[Tombstone]:
    """Every tombstone of a system (optionally one tenant) as (client_id, kind, hash)."""
    q = select(cj_tombstones.c.client_id, cj_tombstones.c.kind, cj_tombstones.c.hash).where(
        cj_tombstones.c.system == system
    )
    if client_id is not None:
        q = q.where(cj_tombstones.c.client_id == client_text(client_id))
    with engine.connect() as conn:
        return {(client_text(c), k, h) for c, k, h in conn.execute(q)}


# --------------------------------------------------------------------------- notices


Outcome = tuple[str, str, str, str | None, bool]  # sub-processor, channel, status, error, acked


def record_notice(
    bind: Engine | Connection,
    request_pk: int,
    subprocessor: str,
    channel: str,
    status: str,
    error_kind: str | None = None,
    at: datetime | None = None,
    acknowledged: bool = False,
) -> NoticeRow:
    """Record the outcome of telling a sub-processor to delete (R16.3) or that none is set up.

    `sent` and `failed` count as attempts; `sent_at` keeps the first successful send; an
    `acknowledged` notice is never downgraded by a later rerun. `acknowledged=True` records a
    send answered with an acknowledgement in the same write (two writes could be split by a
    crash, and a notice marked sent is never sent again). `error_kind` is a short code
    (an exception class or HTTP status), never a message that could carry personal data.
    """
    outcome = (subprocessor, channel, status, error_kind, acknowledged)
    return record_notices(bind, {request_pk: [outcome]}, at=at)[0]


def record_notices(
    bind: Engine | Connection,
    outcomes: Mapping[int, Iterable[Outcome]],
    at: datetime | None = None,
    next_at: Mapping[tuple[int, str], datetime | None] | None = None,
) -> list[NoticeRow]:
    """Many requests' notice outcomes (rules of `record_notice`), recorded in one transaction
    with a handful of statements whatever their number: the notices of a chunk of requests are
    recorded together right after they were sent.

    `next_at` ((request pk, sub-processor) -> when) is the outbox's next try (R16.3 backoff),
    written in the same statement as the outcome; a finished notice (`NOTICE_FINAL`) is never
    changed, and an acknowledged one has no next try."""
    todo = [(pk, *o) for pk, outs in outcomes.items() for o in outs]
    for _pk, _sp, _channel, status, error_kind, acked in todo:
        _check_choice("status", status, ("sent", "failed", "not_configured"))
        if acked and status != "sent":
            raise ValueError("only a sent notice can be acknowledged")
        if error_kind is not None and not _TOKEN.match(error_kind.lower()):
            raise ValueError("error_kind must be a short code such as 'timeout' or 'http_503'")
    if not todo:
        return []
    when = to_utc(at) if at else utcnow()
    t = cj_notices
    keys = list(dict.fromkeys((pk, sp) for pk, sp, *_ in todo))
    with transaction(bind) as conn:
        conn.execute(
            insert_if_absent(conn, t),
            [
                {"request_pk": pk, "subprocessor": sp, "channel": ch, "status": st, "attempts": 0}
                for pk, sp, ch, st, *_ in {(o[0], o[1]): o for o in reversed(todo)}.values()
            ],
        )
        current = _notices_for_update(conn, keys)
        for pk, sp, channel, status, error_kind, acked in todo:  # in order, as separate calls
            cur = current[(pk, sp)]
            if cur["status"] in NOTICE_FINAL:
                continue
            cur.update(status=status, channel=channel, last_attempt_at=when)
            if next_at is not None and (pk, sp) in next_at:
                cur["next_attempt_at"] = next_at[(pk, sp)]
            if status in {"sent", "failed"}:
                cur["attempts"] += 1
            if status == "sent":
                cur["sent_at"] = cur["sent_at"] or when
                cur["last_error_kind"] = None
                if acked:
                    cur.update(status="acknowledged", acked_at=when, next_attempt_at=None)
            elif status == "failed":
                cur["last_error_kind"] = error_kind or "unknown"
            else:
                cur["last_error_kind"] = error_kind
        changed = (
            "status",
            "channel",
            "attempts",
            "sent_at",
            "last_error_kind",
            "acked_at",
            "last_attempt_at",
            "next_attempt_at",
        )
        conn.execute(
            update(t)
            .where(t.c.request_pk == bindparam("k_pk"), t.c.subprocessor == bindparam("k_sp"))
            .values({c: bindparam(f"v_{c}") for c in changed}),
            [
                {"k_pk": pk, "k_sp": sp, **{f"v_{c}": current[(pk, sp)][c] for c in changed}}
                for pk, sp in keys
            ],
        )
        stored = _notices_for_update(conn, keys)
    return [_row(NoticeRow, stored[(pk, sp)]) for pk, sp, *_ in todo]


def _notices_for_update(
    conn: Connection, keys: list[tuple[int, str]]
) -> dict[tuple[int, str], dict[str, Any]]:
    t = cj_notices
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for chunk in _chunks(keys):
        q = select(t).where(tuple_(t.c.request_pk, t.c.subprocessor).in_(chunk)).with_for_update()
        for m in conn.execute(q).mappings():
            out[(m["request_pk"], m["subprocessor"])] = dict(m)
    return out


def acknowledge(
    engine: Engine, request_pk: int, subprocessor: str, at: datetime | None = None
) -> bool:
    """Record a sub-processor's confirmation; True if this call recorded it."""
    t = cj_notices
    where = (t.c.request_pk == request_pk, t.c.subprocessor == subprocessor)
    with engine.begin() as conn:
        status = conn.execute(select(t.c.status).where(*where)).scalar_one_or_none()
        if status is None:
            raise LookupError(f"no notice to {subprocessor} for request {request_pk}")
        return bool(
            conn.execute(
                update(t)
                .where(*where, t.c.status != "acknowledged")
                .values(
                    status="acknowledged",
                    acked_at=to_utc(at) if at else utcnow(),
                    next_attempt_at=None,  # the outbox stops (R16.3); a late ack after give-up
                )  # counts too: the receipt is re-issued either way
            ).rowcount
        )


def notices(engine: Engine, request_pk: int) -> dict[str, NoticeRow]:
    """The notices of one request, by sub-processor."""
    return notices_of(engine, [request_pk]).get(request_pk, {})


def notices_of(engine: Engine, pks: Iterable[int]) -> dict[int, dict[str, NoticeRow]]:
    """The notices of many requests: request pk -> sub-processor -> notice."""
    out: dict[int, dict[str, NoticeRow]] = {}
    with engine.connect() as conn:
        for chunk in _chunks(sorted(set(pks))):
            q = select(cj_notices).where(cj_notices.c.request_pk.in_(chunk))
            for m in conn.execute(q).mappings():
                out.setdefault(m["request_pk"], {})[m["subprocessor"]] = _row(NoticeRow, m)
    return out
