"""Direct transmission to another controller (G3, GDPR Art. 20(2)): one HTTPS POST.

The consumer names the endpoint in the request (`transfer_to`, checked at intake: https only,
plain http only to 127.0.0.1 for tests, no credentials in the URL). The body is the export's
JSON document; `Idempotency-Key` carries a keyed reference of the request (no identity), so a
receiver seeing a retry can drop it. Redirects are not followed: the endpoint is the one the
consumer chose, and a redirect could send the data elsewhere.

What comes back (`Outcome`) is a status code and a short reason code: never the response
body, the URL or the data, which are what the caller records, logs and ledgers.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = 30  # seconds per attempt; a failure keeps the request open for the next run
USER_AGENT = "compliance-jobs-portability/1"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    code: str  # "delivered", "http_<status>", "unreachable", "timeout", "refused_url"
    http_status: int | None = None

    def facts(self) -> dict[str, Any]:
        return {"outcome": self.code, "http_status": self.http_status}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is then raised as an HTTPError: not delivered


def _allowed(url: str) -> bool:
    """Intake's rule, checked again before sending (a document edited in the bucket)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname == "127.0.0.1")


def post(url: str, doc: dict[str, Any], idempotency_key: str | None = None) -> Outcome:
    """POST the document as JSON; delivered on any 2xx."""
    if not _allowed(url):
        return Outcome(False, "refused_url")
    body = json.dumps(doc, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (scheme checked: _allowed)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=TIMEOUT) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        return Outcome(False, f"http_{exc.code}", exc.code)
    except TimeoutError:
        return Outcome(False, "timeout")
    except (urllib.error.URLError, OSError):
        return Outcome(False, "unreachable")
    if 200 <= status < 300:
        return Outcome(True, "delivered", status)
    return Outcome(False, f"http_{status}", status)
