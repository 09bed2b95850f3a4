"""The portability request's own checks (G3, GDPR Art. 20): its jurisdiction and the other
controller's endpoint (`transfer_to`). Like every field check, each raises `FieldRejected` with
one reason code, and a message that names the field and the rule, never the value."""

from __future__ import annotations

import unicodedata
from typing import Any
from urllib.parse import urlsplit

from compliance.requests.fields import FieldRejected, wrong_type
from compliance.requests.request_format import (
    LOOPBACK_HOSTS,
    MAX_URL,
    Jurisdiction,
    Reason,
    RequestType,
)


def check_portability(kind: RequestType, jurisdiction: Jurisdiction) -> None:
    """G3: portability is the GDPR's right (Art. 20). The CCPA has no separate request for it:
    its access report is already portable and readily usable (data.json and csv/ in the
    bundle), so a CCPA document asks for `access` (docs/requests.md)."""
    if kind is RequestType.portability and jurisdiction is not Jurisdiction.gdpr:
        raise FieldRejected(
            Reason.portability_needs_gdpr,
            "type",
            'type "portability" is a GDPR request (Art. 20, G3): set jurisdiction "gdpr"; '
            'under the CCPA send type "access", whose bundle is machine-readable',
        )


def transfer_to_of(doc: dict[str, Any], kind: RequestType) -> str | None:
    """G3: the other controller's endpoint the export goes to directly, when the consumer asks.

    https only (plain http only to 127.0.0.1, for local tests), a host, no user name or
    password in the URL (credentials belong in the receiving side's configuration, not in a
    request document that is logged and stored), no fragment. Never echoed."""
    value = doc.get("transfer_to")
    if value is None:
        return None
    if kind is not RequestType.portability:
        raise FieldRejected(
            Reason.bad_transfer_to,
            "transfer_to",
            "transfer_to applies to portability requests only (G3, Art. 20(2))",
        )
    if not isinstance(value, str):
        raise wrong_type("transfer_to", "an https URL string", value, "G3")
    problem = _url_problem(value)
    if problem:
        raise FieldRejected(
            Reason.bad_transfer_to, "transfer_to", f"transfer_to {problem} (G3, Art. 20(2))"
        )
    return value


def _url_problem(value: str) -> str | None:
    if not value or len(value) > MAX_URL:
        return f"must hold 1 to {MAX_URL} characters"
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Zs", "Zl", "Zp"} for ch in value):
        return "must not contain blanks or control characters"
    try:
        url = urlsplit(value)
        host, port = url.hostname, url.port
    except ValueError:
        return "is not a valid URL"
    del port  # parsed only to refuse a malformed one
    if url.scheme == "http" and host in LOOPBACK_HOSTS:
        pass
    elif url.scheme != "https":
        return "must be an https:// URL (http only to 127.0.0.1, for tests)"
    if not host:
        return "must name a host"
    if url.username is not None or url.password is not None:
        return "must not carry a user name or password"
    if url.fragment:
        return "must not have a #fragment"
    return None
