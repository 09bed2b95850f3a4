"""CCPA request metrics (R23) and the operations view of open requests, from `cj_requests`.

R23 (11 CCR 7102(a)): for a calendar year, per request type, the number of requests received,
complied with in whole or in part, and denied, and the median or mean days to respond. We owe
them to our clients, so they are computed per client (and for all clients together), for the
requests received in that year:

- received: every request of the year (its `received_at`, the business's receipt, R1) except
  invalid submissions: received = complied + denied + pending;
- complied_whole_or_part: status `completed` (an erasure or export done, possibly with
  exceptions, R14/R19) or `partial` (erased but for what a scoped legal hold keeps, R16.2/R21;
  its response date is the partial erasure's);
- denied: status `rejected` on a substantive basis (R5/R24 unverifiable, R6/R27, R19 exempt,
  R21), with a response date (`completed_at`) and a reason (`reason_code`), broken down by
  reason and by R23's optional categories (unverifiable, not made by a consumer, exempt, other;
  `config/statistics.yaml` maps codes);
- invalid: refused because the document was not a well-formed request (`intake.
  INVALID_SUBMISSION`: bad JSON, a field's format...): counted apart, never as a denial (issue
  15). Intake logs what the document says (R22); a jurisdiction it did not give readably is
  `unknown`, counted here as invalid under the CCPA (it could be one), a type `unknown` gets its
  own row, and a receipt time it did not give counts in the year of our refusal;
- pending: still open or deferred when the metrics are computed (none of the above);
- days to respond: `completed_at - received_at`, in days (elapsed time / 24 h), over the
  requests complied with or denied by then (a denial is a substantive response); median and
  mean are both given, R23 asks for either.

R23 names our two types `delete` and `know` (our `access`). The other R23 types (correct,
opt-out, limit) are not forwarded to a service provider and do not appear.

The operations view lists every open or deferred request (all jurisdictions) with the deadline
in force (`extended_due` after a valid R4 extension, else `response_due`), the days left on the
run's day, and whether it is overdue. Nothing here is personal data: request rows carry no
identity, and `subject_hash` is never read.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.sqlmap import by_key_order, key_order, key_text
from compliance.requests.intake import INVALID_SUBMISSION
from compliance.requests.state import UNKNOWN
from compliance.stats.config import Ccpa

R23_TYPE = {"delete": "delete", "access": "know"}
INVALID_CODES = sorted(r.value for r in INVALID_SUBMISSION)
REQUEST_COLUMNS = [
    "id",
    "client_id",
    "request_id",
    "type",
    "jurisdiction",
    "status",
    "reason_code",
    "received_at",
    "response_due",
    "extended_due",
    "completed_at",
]
METRIC_COLUMNS = [
    "year",
    "client_id",
    "request_type",
    "received",
    "complied_whole_or_part",
    "denied",
    "invalid",
    "pending",
    "responded",
    "median_days_to_respond",
    "mean_days_to_respond",
]


def _requests_table(engine: Engine) -> sa.Table | None:
    """`compliance.requests.state.cj_requests` when the table exists; None when it was never
    created."""
    if not sa.inspect(engine).has_table("cj_requests"):
        return None
    try:
        from compliance.requests.state import cj_requests
    except ImportError:  # pragma: no cover - state.py is part of the project
        return sa.Table("cj_requests", sa.MetaData(), autoload_with=engine)
    return cj_requests


def load_requests(engine: Engine) -> pd.DataFrame | None:
    """The request log's columns the metrics need (no identities); None without a table."""
    table = _requests_table(engine)
    if table is None:
        return None
    query = sa.select(*(table.c[c] for c in REQUEST_COLUMNS))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    df = pd.DataFrame(rows, columns=REQUEST_COLUMNS)
    df["client_id"] = df["client_id"].map(key_text).astype(object)  # tenant ids are text
    for col in ("received_at", "completed_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    for col in ("response_due", "extended_due"):
        df[col] = pd.to_datetime(df[col]).dt.date
    return df


def _days(df: pd.DataFrame) -> pd.Series:
    return (df["completed_at"] - df["received_at"]).dt.total_seconds() / 86_400


def ccpa_metrics(
    requests: pd.DataFrame, year: int, as_of: datetime, cfg: Ccpa
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics per client and type plus an `all` row per type, denials by reason)."""
    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    lo = datetime(year, 1, 1, tzinfo=UTC)
    hi = min(datetime(year + 1, 1, 1, tzinfo=UTC), as_of)
    # An invalid submission without a readable receipt counts in the year we refused it.
    when = requests["received_at"].fillna(requests["completed_at"])
    invalid = requests["status"].eq("rejected") & requests["reason_code"].isin(INVALID_CODES)
    jurisdictions = set(cfg.jurisdictions) | ({UNKNOWN} if "ccpa" in cfg.jurisdictions else set())
    rows = requests[
        requests["jurisdiction"].isin(jurisdictions)
        & (requests["jurisdiction"].ne(UNKNOWN) | invalid)
        & (when >= lo)
        & (when < hi)
    ].copy()
    rows["request_type"] = rows["type"].map(R23_TYPE).fillna(rows["type"])
    # Requests received in the year count, however late in the year; their responses count up
    # to when the metrics are computed (a response dated later did not exist yet).
    answered = rows["completed_at"].notna() & (rows["completed_at"] <= as_of)
    rows["invalid"] = rows["status"].eq("rejected") & rows["reason_code"].isin(INVALID_CODES)
    rows["complied"] = rows["status"].isin(("completed", "partial")) & answered
    rows["denied"] = rows["status"].eq("rejected") & ~rows["invalid"]
    rows["pending"] = ~(rows["complied"] | rows["denied"] | rows["invalid"])
    rows["days"] = _days(rows).where(answered & (rows["complied"] | rows["denied"]))

    def summarise(frame: pd.DataFrame, client: object) -> list[dict]:
        out = []
        for rtype in sorted(set(R23_TYPE.values()) | set(frame["request_type"])):
            part = frame[frame["request_type"] == rtype]
            days = part["days"].dropna()
            out.append(
                {
                    "year": year,
                    "client_id": client,
                    "request_type": rtype,
                    "received": len(part) - int(part["invalid"].sum()),
                    "complied_whole_or_part": int(part["complied"].sum()),
                    "denied": int(part["denied"].sum()),
                    "invalid": int(part["invalid"].sum()),
                    "pending": int(part["pending"].sum()),
                    "responded": len(days),
                    "median_days_to_respond": round(float(days.median()), 1)
                    if len(days)
                    else np.nan,
                    "mean_days_to_respond": round(float(days.mean()), 1) if len(days) else np.nan,
                }
            )
        return out

    records: list[dict] = []
    per_client = dict(list(rows.groupby("client_id")))  # per client, not per request
    for client in sorted(per_client, key=key_order):
        records += summarise(per_client[client], key_text(client))
    records += summarise(rows, "all")
    metrics = pd.DataFrame(records, columns=METRIC_COLUMNS)

    denied = rows[rows["denied"]].copy()
    denied["reason_code"] = denied["reason_code"].fillna("unspecified")
    denied["r23_category"] = denied["reason_code"].map(cfg.category_of)
    denials = (
        denied.groupby(["client_id", "request_type", "r23_category", "reason_code"])
        .size()
        .rename("denied")
        .reset_index()
        .sort_values(["client_id"], key=by_key_order, kind="stable")
        .reset_index(drop=True)
    )
    denials.insert(0, "year", year)
    return metrics, denials


def operations_view(requests: pd.DataFrame, as_of: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(open and deferred requests with days left, per-client summary), soonest deadline first."""
    live = requests[requests["status"].isin(["open", "deferred"])].copy()
    live["due"] = [
        ext if ext is not None and not pd.isna(ext) else resp
        for ext, resp in zip(live["extended_due"], live["response_due"], strict=True)
    ]
    live["extended"] = live["extended_due"].map(lambda d: d is not None and not pd.isna(d))
    live["days_left"] = [
        (d - as_of).days if d is not None and not pd.isna(d) else np.nan for d in live["due"]
    ]
    live["overdue"] = live["days_left"] < 0
    live["received_on"] = live["received_at"].dt.date
    live.insert(0, "as_of", as_of.isoformat())
    live = live.sort_values(["days_left", "id"], na_position="first", kind="stable")
    columns = [
        "as_of",
        "id",
        "client_id",
        "request_id",
        "type",
        "jurisdiction",
        "status",
        "reason_code",
        "received_on",
        "due",
        "extended",
        "days_left",
        "overdue",
    ]
    live = live[columns].reset_index(drop=True)
    live["days_left"] = live["days_left"].astype("Int64")
    summary = (
        live.groupby("client_id", sort=True)
        .agg(
            open=("status", lambda s: int((s == "open").sum())),
            deferred=("status", lambda s: int((s == "deferred").sum())),
            overdue=("overdue", "sum"),
            due_within_7_days=("days_left", lambda s: int(((s >= 0) & (s <= 7)).sum())),
            next_due=("due", "min"),
        )
        .reset_index()
        .sort_values(["client_id"], key=by_key_order, kind="stable")
        .reset_index(drop=True)
    )
    summary.insert(0, "as_of", as_of.isoformat())
    return live, summary
