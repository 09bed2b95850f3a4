"""The trigger-form field the request DAGs share: a reference to one request, never its data.

A run's conf is kept in Airflow's metadata database for good and shown to everyone who can
list runs, viewers included, so the forms have no identity field (issue 16). Staff enter a
request on the staff page (Compliance -> Enter a request, `plugins/compliance_desk.py`): it is
validated like any client's document, written to the inbox, and the DAG is triggered with only
`request_ref` = `<client_id>/<request_id>` (`compliance.requests.staff_entry`). Each DAG adds
its own run options (dry run, link expiry...).
"""

from __future__ import annotations

from airflow.sdk import Param

ONE = "One request entered on the staff page (optional)"


def request_form() -> dict[str, Param]:
    return {
        "request_ref": Param(
            None,
            type=["null", "string"],
            pattern=r"^[^@\s]+/[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
            title="Request reference",
            description="<client_id>/<request_id> of a request entered on the staff page "
            "(Compliance -> Enter a request); the run reports where it stands. Identities are "
            "never entered here: this form is kept in Airflow's database.",
            section=ONE,
        ),
    }
