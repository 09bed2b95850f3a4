"""The trigger-form fields of one consumer request, shared by the request DAGs.

Staff enter one request the same way for access and deletion; the document they make goes
through the inbox like any client's (`compliance.requests.inbox.form_document`), so the form cannot
bypass
a validation rule. Each DAG adds its own run options (dry run, look-back, link expiry...).
"""

from __future__ import annotations

from airflow.sdk import Param

ONE = "Enter one request (optional)"


def request_form() -> dict[str, Param]:
    return {
        "request_id": Param(
            None,
            type=["null", "string"],
            title="Request id",
            description="The client's id for this request (letters, digits, . _ : -).",
            section=ONE,
        ),
        "client_id": Param(  # tenant ids may be integers, text or UUIDs (issue 14)
            None,
            type=["null", "string"],
            title="Client id",
            description="As the CRM spells it, e.g. 6, acme-east or a UUID.",
            section=ONE,
        ),
        "email": Param(
            None, type=["null", "string"], title="Consumer e-mail", format="email", section=ONE
        ),
        "phone": Param(None, type=["null", "string"], title="Consumer phone", section=ONE),
        "contact_id": Param(
            None, type=["null", "string"], title="Client-side contact id", section=ONE
        ),
        "received_at": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Received by the business at",
            description="Starts the clock (R1); for access, also ends the look-back window (R9).",
            section=ONE,
        ),
        "verification_method": Param(
            None,
            type=["null", "string"],
            title="Verification method",
            description="How the business verified the consumer, e.g. email_link (R5).",
            section=ONE,
        ),
        "verified_at": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Verified at",
            description="Defaults to the time of receipt.",
            section=ONE,
        ),
        "verified_by": Param(None, type=["null", "string"], title="Verified by", section=ONE),
        "verification_level": Param(
            "specific_pieces",
            enum=["specific_pieces", "categories"],
            title="Verified to the degree of",
            description="R5: specific_pieces (the default) or categories, when the business could "
            "verify the consumer only for categories. An access request is then answered with "
            "categories only; a deletion is refused.",
            section=ONE,
        ),
        "jurisdiction": Param("ccpa", enum=["ccpa", "gdpr"], title="Jurisdiction", section=ONE),
    }
