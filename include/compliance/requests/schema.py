"""The state database's tables (requests, batches, tombstones, notices) and their creation and
in-place upgrades. The ledger's table is declared in `compliance.core.ledger` on the same
`metadata`; `create_state_schema` creates both."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.exc import OperationalError

from compliance.core import ledger
from compliance.core.statedb import CLIENT_ID, ID, UTCDateTime, metadata

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


# The client API (issue 18, `compliance.desk`). Calls: one row per signed call's nonce, so a
# replay inside the window is refused by every api-server worker alike, and the same rows count
# calls for the per-client rate limit; pruned after the replay window.
cj_api_calls = Table(
    "cj_api_calls",
    metadata,
    Column("api_key", String(64), primary_key=True),
    Column("nonce", String(128), primary_key=True),
    Column("at", UTCDateTime, nullable=False),
)
Index("ix_cj_api_calls_key_at", cj_api_calls.c.api_key, cj_api_calls.c.at)

# Requests submitted through the API: the idempotency key is (client, request_id); the body's
# digest tells a retried submission (same body: the same answer) from a conflicting one (409).
cj_api_requests = Table(
    "cj_api_requests",
    metadata,
    Column("client_id", CLIENT_ID, primary_key=True),
    Column("request_id", String(64), primary_key=True),
    Column("type", String(16), nullable=False),
    Column("api_key", String(64), nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("submitted_at", UTCDateTime, nullable=False),
)

# The callback outbox: one row per status change a client is told about (received,
# acknowledged, extended, deferred, completed, denied), delivered with backoff until the
# client's endpoint acknowledges it (2xx). `detail` is a reason code, never free text with PII.
cj_callbacks = Table(
    "cj_callbacks",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("api_key", String(64), nullable=False),
    Column("client_id", CLIENT_ID, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("event", String(16), nullable=False),
    Column("detail", String(64), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime),  # None once acknowledged
    Column("last_attempt_at", UTCDateTime),
    Column("last_status", Integer),  # the endpoint's HTTP status, or None (no answer)
    Column("acked_at", UTCDateTime),
    UniqueConstraint("client_id", "request_id", "event", "detail", name="uq_cj_callbacks"),
)
Index("ix_cj_callbacks_due", cj_callbacks.c.acked_at, cj_callbacks.c.next_attempt_at)


def create_state_schema(engine: Engine) -> None:
    """Create every `cj_` table (the ledger's too) if missing; safe to call on every run."""
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
