"""Who is told at contract end: the sub-processors (notices), and staff when nobody approved.

**Sub-processors** (G4 Art. 28(4): a sub-processor is bound as we are, so it deletes too at the
end of the contract; R16.3 is how we tell them). One client-level notice per sub-processor goes
through the deletion notice outbox (`compliance.deletion.outbox`), so it is retried with backoff
until acknowledged, given up on the record, and chased by the daily watchdog like any other
notice. The body carries no consumer identity: `type: contract_end`, the client id, the
categories that sub-processor holds and the rules. The outbox keys its notices by a row of the
request log, so the contract end gets one: type `offboarding`, request id `contract-end`,
jurisdiction `contract` (outside every jurisdiction the R23 metrics count), status `completed`;
one per client, so a rerun queues nothing twice. Recipients (R16.4) are not told here: they got
a consumer's data for the consumer's own requests, not the client's contract.

**Approval not given.** The approval step's default is Reject, taken when nobody answers within
its timeout; either way execute is skipped and the client's data stays (R27 says it must not
stay forever). `not_approved` sends one alert through the staff channels
(`compliance.core.alerts`) naming the clients and the report; the next scheduled run asks
again. Client ids and counts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from compliance.core import alerts
from compliance.core.context import JobContext
from compliance.core.statedb import insert_if_absent, transaction
from compliance.deletion import outbox
from compliance.deletion.subprocessors import Senders
from compliance.requests.schema import cj_requests

REQUEST_TYPE = "offboarding"
REQUEST_ID = "contract-end"
JURISDICTION = "contract"  # no consumer law's: the R23 metrics leave it out
NOTICE_TYPE = "contract_end"
NOTICE_RULES = ("G4 Art. 28(3)(g)", "G4 Art. 28(4)", "R27")
SOURCE = "client_offboarding"
WHY = (
    "the approval was rejected, or nobody answered it within its timeout and its default "
    "(Reject) was taken"
)


@dataclass(frozen=True)
class _ClientNotice:
    """What `outbox.enqueue` reads of a batch, for one client's contract end (no identities)."""

    pk: int
    client: str

    @property
    def requests(self) -> dict[str, dict[str, Any]]:
        return {str(self.pk): {"client_id": self.client, "request_id": REQUEST_ID}}

    @property
    def identities(self) -> dict[str, dict[str, list[str]]]:
        return {}

    def active_refs(self) -> list[str]:
        return [str(self.pk)]


def _request_pk(ctx: JobContext, client: str) -> int:
    """The request-log row the client's notices hang on (one per client, created once)."""
    t, now = cj_requests, ctx.now()
    row = {
        "client_id": client,
        "request_id": REQUEST_ID,
        "type": REQUEST_TYPE,
        "jurisdiction": JURISDICTION,
        "status": "completed",
        "received_at": now,
        "accepted_at": now,
        "completed_at": now,
        "source": SOURCE,
    }
    with transaction(ctx.state) as conn:
        conn.execute(insert_if_absent(conn, t), [row])
        return int(
            conn.execute(
                sa.select(t.c.id).where(
                    t.c.client_id == client,
                    t.c.request_id == REQUEST_ID,
                    t.c.type == REQUEST_TYPE,
                )
            ).scalar_one()
        )


def queue_notices(ctx: JobContext, client: str) -> list[dict[str, Any]]:
    """Queue one contract-end notice per sub-processor; what the receipt lists (no bodies)."""
    if not ctx.datamap.subprocessors:
        return []
    pk = _request_pk(ctx, client)
    ws = ctx.workspace
    outbox.enqueue(
        ws.s3,
        ws.bucket,
        ctx.datamap,
        ctx.state,
        ctx.hash_key,
        _ClientNotice(pk, client),
        ctx.now(),
        kinds=("subprocessor",),
        notice_type=NOTICE_TYPE,
        extra_rules=NOTICE_RULES,
    )
    return [
        {
            "name": sp.name,
            "channel": sp.channel,
            "categories": sorted(c.value for c in sp.categories),
            "status": "queued",
            "outbox": outbox.notice_key(pk, sp.name),
        }
        for sp in sorted(ctx.datamap.subprocessors, key=lambda s: s.name)
    ]


def send_due(ctx: JobContext) -> dict[str, int]:
    """Send what is due now (this run's notices among them); the outbox retries the rest."""
    ws = ctx.workspace
    sent = outbox.deliver(
        ws.s3,
        ws.bucket,
        ctx.datamap,
        ctx.state,
        ctx.hash_key,
        ctx.now(),
        Senders.of(ctx),
        outbox.Policy.from_env(ctx.settings.env),
    )
    return dict(sent)


def not_approved(ctx: JobContext, planned: dict[str, Any]) -> dict[str, Any]:
    """The approval was rejected, or nobody answered before its timeout (its default, Reject):
    execute was skipped. One alert to the staff channels; fails if every channel refused it.

    Which of the two it was is Airflow's record (Browse -> Required Actions shows who answered,
    or that the timeout did): the approval step's resumed result is not an XCom under 3.3, and
    the alert needs nothing a person could not see there."""
    if not planned or planned.get("dry_run") or not planned.get("clients"):
        return {"sent": [], "alerted": False}  # nothing was waiting for an approval
    clients = list(planned["clients"])
    message = alerts.Alert(
        subject=(
            f"[compliance] offboarding {planned['run_id']} not approved: {len(clients)} "
            f"client(s) keep their data"
        ),
        body="\n".join(
            [
                f"The {planned['action']} of the data of {len(clients)} client(s) whose contract "
                f"ended was not run: {WHY}.",
                f"Clients: {', '.join(clients)}.",
                f"Counts: {planned['report_key']}.",
                "",
                "An ended client's data must not be kept beyond the contract (R27, G4 Art. "
                "28(3)(g)): the next scheduled run asks again. If the data must stay, record a "
                "legal hold (R19); if the contract was reinstated, clear its end date.",
                "What to do: docs/offboarding.md, section 'When nobody approves'.",
            ]
        ),
        kind="offboarding",
    )
    sent = alerts.send_digest(ctx.channels, message, "offboarding approval alert")
    return {**sent, "alerted": True, "clients": len(clients)}
