"""Deletion notices as an outbox: told until acknowledged, or given up on the record (R16.3, R16.4).

R16.3 says our own sub-processors must be told to delete, and the status tracked per
sub-processor; R16.4 says others who got the data through us must be told too, unless that is
impossible or a disproportionate effort. A notice that failed once and was never tried again
tells nobody, so every notice lives in an outbox until it is *finished*:

- **queued** (`enqueue`, in the deletion run that erases the request): one row per request and
  sub-processor or recipient in `cj_notices` (status `pending`), and the notice body, which must
  carry the identities, encrypted in the workspace bucket at `outbox/<request pk>/<name>.json`.
  The body is written before the row, so a row never lacks its body. A recipient the data map
  says cannot be told gets a finished row `exempt` instead, and its justification goes to the
  ledger (`recipient_not_told`) and the receipt;
- **retried** (`deliver`, on every deletion run for the notices of *every* earlier request, and
  from the daily watchdog): a notice that is not acknowledged is due again at
  `last attempt + base * 2^(attempts - 1)`, capped (`Policy`); a channel not configured here
  (no SNS client, no SMTP connection) is re-checked at the base interval, so it goes out on the
  first run after it is configured. `sent` without an acknowledgement (SNS, e-mail, a webhook
  that does not answer `{"acknowledged": true}`) is repeated too: the same `request_ref`, so the
  recipient recognises it, until someone records the acknowledgement (`state.acknowledge`);
- **finished**: `acknowledged`, or `given_up` once the give-up time passed (per sub-processor or
  recipient `give_up_after_days` in the data map, default `COMPLIANCE_NOTICE_GIVE_UP_DAYS`, 30
  days from queueing); a give-up goes to the ledger (`notice_given_up`) and to the watchdog's
  alerts. The body is deleted when the notice is finished, so identities outlive the request
  only as long as the law still asks us to tell someone (R20).

A request completes when its data is erased (R16.1): the receipt shows each notice's status and
attempts. When a status changes later, `reissue` writes a new receipt version at the same key,
keeps the previous one beside it (`<request>.delete.v<N>.json`), and appends `receipt_reissued`
to the ledger, so what was told to the business can always be reconstructed.

Crash safety: at least once, never lost. A crash after a send and before its record re-sends it
(`request_ref` is stable, so a repeat can be dropped); receipts are compared with the state
before a new version is written, so a crash between writing and marking repeats nothing.
Two runs that overlap (the hourly deletion run and the daily watchdog) may send a due notice
twice, with the same `request_ref`; that is accepted rather than adding a lease that a crash
could strand.

Entry points take the job's context (`compliance.core.context.JobContext`): `run` (the deletion
run's notice step), `chase` and `send_alerts` (the watchdog's). The parts: who and how patiently
(`parties`), queueing and sending (`delivery`), receipts (`receipts`), what needs a person
(`watch`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from compliance.core import alerts
from compliance.core.context import JobContext
from compliance.core.outputs import put_json
from compliance.deletion.outbox.delivery import deliver, enqueue, sweep
from compliance.deletion.outbox.parties import (
    OUTBOX,
    RECEIPTS,
    Party,
    Policy,
    PolicyInvalid,
    notice_key,
    parties,
    receipt_key,
    request_ref,
)
from compliance.deletion.outbox.receipts import receipt_sections, reissue
from compliance.deletion.outbox.watch import NoticeAlert, digest, report_key, watch
from compliance.deletion.subprocessors import Senders
from compliance.requests import batches

__all__ = [
    "OUTBOX",
    "RECEIPTS",
    "NoticeAlert",
    "Party",
    "Policy",
    "PolicyInvalid",
    "QueuedBatch",
    "chase",
    "deliver",
    "digest",
    "enqueue",
    "notice_key",
    "parties",
    "receipt_key",
    "receipt_sections",
    "reissue",
    "report_key",
    "request_ref",
    "run",
    "send_alerts",
    "sweep",
    "watch",
]


@dataclass(frozen=True)
class QueuedBatch:
    """What `enqueue` reads of a batch's targets document: its requests and their identities.

    Read from the stored document (`compliance.requests.batches`) rather than through
    `erasure.Targets`, because erasure imports the outbox for its receipts' sections: the same
    rule for which requests are active (neither deferred by a hold nor waiting on one)."""

    requests: Mapping[str, Mapping[str, Any]]
    identities: Mapping[str, Mapping[str, list[str]]]
    inactive: frozenset[str]

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> QueuedBatch:
        inactive = frozenset(doc.get("deferred") or {}) | frozenset(doc.get("waiting") or {})
        return cls(doc.get("requests") or {}, doc.get("identities") or {}, inactive)

    def active_refs(self) -> list[str]:
        return [r for r in self.requests if r not in self.inactive]


def run(ctx: JobContext, batch_id: str) -> dict[str, int]:
    """The deletion run's notice step: queue this batch's notices (`batch_id` "" when the run
    erased nothing), send every due notice of any request, re-issue receipts whose notice
    statuses changed, drop finished bodies. Counts only."""
    ws, dm, now = ctx.workspace, ctx.datamap, ctx.now()
    policy = Policy.from_env(ctx.settings.env)
    tally: Counter[str] = Counter()
    if batch_id:
        try:
            doc: dict[str, Any] | None = batches.load_targets(ws, batch_id, None)
        except ws.s3.exceptions.NoSuchKey:  # finished and cleaned up: queued before finalize ran
            doc = None
        if doc is not None:
            queued = enqueue(
                ws.s3, ws.bucket, dm, ctx.state, ctx.hash_key, QueuedBatch.of(doc), now
            )
            tally.update(queued)
    senders = Senders.of(ctx)
    tally.update(deliver(ws.s3, ws.bucket, dm, ctx.state, ctx.hash_key, now, senders, policy))
    tally["receipts_reissued"] += reissue(ws.s3, ws.bucket, dm, ctx.state, ctx.hash_key, now)
    sweep(ws.s3, ws.bucket, ctx.state)
    return dict(tally)


def chase(ctx: JobContext, last_check: datetime | None = None) -> dict[str, Any]:
    """The watchdog's notice step: send what is due, re-issue changed receipts, then report
    what needs a person (`watch`; give-ups since `last_check`, the previous successful run) to
    `deadlines/<day>/notices.json`. Counts and the key."""
    ws, dm, now = ctx.workspace, ctx.datamap, ctx.now()
    policy = Policy.from_env(ctx.settings.env)
    senders = Senders.of(ctx)
    sent = deliver(ws.s3, ws.bucket, dm, ctx.state, ctx.hash_key, now, senders, policy)
    reissued = reissue(ws.s3, ws.bucket, dm, ctx.state, ctx.hash_key, now)
    sweep(ws.s3, ws.bucket, ctx.state)
    found = watch(dm, ctx.state, now, last_check, senders, policy)
    key = report_key(now.date())
    put_json(
        ws.s3,
        ws.bucket,
        key,
        {
            "as_of": now.isoformat(),
            "alert_after_days": policy.alert_after.days,
            "alerts": [asdict(a) for a in found],
        },
    )
    return {
        "delivered": dict(sent),
        "receipts_reissued": reissued,
        "alerts": len(found),
        "by_problem": dict(Counter(a.problem for a in found)),
        "key": key,
    }


def send_alerts(ctx: JobContext, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Dispatch the notice digest `chase` reported through the staff channels; fail when every
    configured channel did (a silent failure would hide notices nobody confirmed)."""
    if not summary.get("alerts"):
        return {"sent": []}
    ws = ctx.workspace
    doc = json.loads(ws.s3.get_object(Bucket=ws.bucket, Key=summary["key"])["Body"].read())
    message = digest([NoticeAlert(**a) for a in doc["alerts"]], ctx.now().date())
    return alerts.send_digest(ctx.channels, message, "notice digest")
