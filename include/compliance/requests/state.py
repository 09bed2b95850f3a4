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

The code lives in modules by concern; this module gathers their public names so that
`state.X` keeps working for callers that use several of them: `compliance.core.statedb`
(metadata, column types, transactions; shared with the ledger), `schema` (tables, creation,
upgrades), `state_rows` (allowed values, refusals, row types), `request_queries`,
`transitions` (status changes, the R4 extension), `batch_state` (batches, tombstones) and
`notices`.
"""

from __future__ import annotations

from compliance.core.statedb import (
    CLIENT_ID,
    ID,
    STATE_CONN_ID,
    UTCDateTime,
    insert_if_absent,
    to_utc,
    transaction,
    utcnow,
)
from compliance.requests.batch_state import (
    Tombstone,
    add_tombstones,
    batch_lines,
    batch_plan,
    finish_batch,
    get_batch,
    plan_batch,
    record_lines,
    tombstone_hashes,
)
from compliance.requests.deadlines import (
    CCPA_EXTENDED_LAST_DAY,
    CCPA_FIRST_PERIOD_LAST_DAY,
    extension_window,
)
from compliance.requests.notices import (
    Outcome,
    acknowledge,
    notices,
    notices_of,
    record_notice,
    record_notices,
)
from compliance.requests.request_queries import (
    RequestKey,
    actionable_requests,
    batch_requests,
    existing_dedupe_keys,
    find_requests,
    get_requests,
    insert_requests,
    open_requests,
    request_keys,
    requests_holding_keys,
    subject_request_count,
)
from compliance.requests.schema import (
    cj_batch_lines,
    cj_batch_plan,
    cj_batches,
    cj_notices,
    cj_request_keys,
    cj_requests,
    cj_tombstones,
    create_state_schema,
    metadata,
)
from compliance.requests.state_rows import (
    ACCEPTED_STATUSES,
    BATCH_KINDS,
    BATCH_STATUSES,
    DEDUPE_STATUSES,
    JURISDICTIONS,
    NOTICE_FINAL,
    NOTICE_STATUSES,
    REQUEST_TYPES,
    STATUSES,
    UNKNOWN,
    BatchRow,
    ExtensionRefused,
    NewRequest,
    NoticeRow,
    PlanRow,
    RequestRow,
    StateError,
    TransitionRefused,
    client_text,
    row_of,
)
from compliance.requests.transitions import (
    record_extension,
    set_status,
)

__all__ = [
    "ACCEPTED_STATUSES",
    "BATCH_KINDS",
    "BATCH_STATUSES",
    "CCPA_EXTENDED_LAST_DAY",
    "CCPA_FIRST_PERIOD_LAST_DAY",
    "CLIENT_ID",
    "DEDUPE_STATUSES",
    "ID",
    "JURISDICTIONS",
    "NOTICE_FINAL",
    "NOTICE_STATUSES",
    "REQUEST_TYPES",
    "STATE_CONN_ID",
    "STATUSES",
    "UNKNOWN",
    "BatchRow",
    "ExtensionRefused",
    "NewRequest",
    "NoticeRow",
    "Outcome",
    "PlanRow",
    "RequestKey",
    "RequestRow",
    "StateError",
    "Tombstone",
    "TransitionRefused",
    "UTCDateTime",
    "acknowledge",
    "actionable_requests",
    "add_tombstones",
    "batch_lines",
    "batch_plan",
    "batch_requests",
    "cj_batch_lines",
    "cj_batch_plan",
    "cj_batches",
    "cj_notices",
    "cj_request_keys",
    "cj_requests",
    "cj_tombstones",
    "client_text",
    "create_state_schema",
    "existing_dedupe_keys",
    "extension_window",
    "find_requests",
    "finish_batch",
    "get_batch",
    "get_requests",
    "insert_if_absent",
    "insert_requests",
    "metadata",
    "notices",
    "notices_of",
    "open_requests",
    "plan_batch",
    "record_extension",
    "record_lines",
    "record_notice",
    "record_notices",
    "request_keys",
    "requests_holding_keys",
    "row_of",
    "set_status",
    "subject_request_count",
    "to_utc",
    "tombstone_hashes",
    "transaction",
    "utcnow",
]

_row = row_of  # the name callers used before the split
