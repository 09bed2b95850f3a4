"""
### Request extension (R4)

Records the **one** extension the CCPA allows for a request (R4; G1 for the GDPR): the response
deadline moves from day 45 to day 90 (GDPR: from one month to three). Compliance staff fill the
form after the notice with the reason has been sent to the consumer.

Refused, with the reason in the task log and in the failure alert, when:

* the request is unknown, completed or rejected;
* it was already extended (**second extension**);
* the notice is missing, dated before receipt or **after the 45th day** (GDPR: after the
  first month), counted in the business's local days like receipt (give its UTC offset);
* the notice is dated **in the future** (record the extension once the notice has gone out);
* the reason is blank or quotes an e-mail address or phone number (no personal data is kept).

A refused extension changes nothing; the same form submitted twice is a no-op. An accepted one
is written to the request (`extended_due`) and to the audit ledger (`request_extended`). The
deadline watchdog then counts down to the new date. Task: `compliance.jobs.extension.record`;
logic: `compliance.requests.deadline_watch.extend`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from compliance import runtime
from compliance.jobs import extension
from compliance.requests import state
from compliance_alerts import DEFAULT_ARGS

FORM = {
    "client_id": Param(
        type="string",  # one text input in the form; integer ids are typed as digits
        minLength=1,
        title="Client id",
        description="The business client that forwarded the request, as our records spell "
        "its id (e.g. 7 or acme-east).",
        section="Request",
    ),
    "request_id": Param(
        type="string",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
        title="Request id",
        description="The client's id for this request (letters, digits, . _ : -).",
        section="Request",
    ),
    "type": Param(
        "delete",
        enum=list(state.REQUEST_TYPES),
        values_display={"delete": "Deletion", "access": "Access (right to know)"},
        title="Request type",
        section="Request",
    ),
    "notice_at": Param(
        type="string",
        format="date-time",
        title="Notice sent at",
        description="When the extension notice (with its reason) went to the consumer. R4: within "
        "the first 45 days (GDPR: the first month), counted in the business's local days.",
        section="Extension notice",
    ),
    "notice_utc_offset": Param(
        None,
        type=["null", "string"],
        pattern=r"^([+-](0[0-9]|1[0-4]):[0-5][0-9]|Z)$",
        title="Business's UTC offset",
        description="The business's offset on the day of the notice, e.g. -08:00 (as on the "
        "request's received_at). The notice is dated by the business's local day, like receipt "
        "(R4). Empty: the offset typed with the notice time.",
        section="Extension notice",
    ),
    "reason": Param(
        type="string",
        format="multiline",
        minLength=10,
        maxLength=500,
        title="Reason given in the notice",
        description="As stated to the consumer, e.g. the volume or complexity of the request. "
        "No names, e-mail addresses or phone numbers.",
        section="Extension notice",
    ),
}


def _refusal_fails(step: Callable[..., dict], *args: Any) -> dict:
    """A refusal is an answer, not an outage: fail at once (no retry), the reason first."""
    try:
        return step(*args)
    except state.ExtensionRefused as refused:
        raise AirflowFailException(
            f"extension refused ({refused.reason_code}): {refused.message}"
        ) from refused


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Manual only, and it refuses anything R4 does not allow: usable as soon as it is deployed.
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    params=FORM,
    tags=["compliance", "operations"],
    doc_md=__doc__,
)
def request_extension():
    @task
    def record(params: dict | None = None) -> dict:
        return _refusal_fails(extension.record, runtime.context(), params or {})

    record()


request_extension()
