"""One signed POST of a status callback to a client's endpoint (issue 18, item 1).

Plain `urllib.request`: the desk layer may not import Airflow's HTTP hooks, and one POST with a
timeout needs nothing more. Redirects are not followed (a POST turned into a GET elsewhere would
be "delivered" nowhere): a 3xx is an unacknowledged answer and is retried. The answer's body is
read and dropped, never logged (a client's error page may echo anything).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit

from compliance.desk import signing


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())
MAX_ANSWER = 64 * 1024


def signed_path(url: str) -> str:
    """What the signature covers: the URL's path, with its query if any (`signing.canonical`)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def post(url: str, secret: bytes, key: str, body: bytes, timeout: float) -> int | None:
    """POST `body` signed with the credential; the HTTP status, or None when there was no
    answer (refused, timed out, reset, DNS). Never raises for the endpoint's faults."""
    if urlsplit(url).scheme not in ("http", "https"):  # checked by `api_clients` too
        return None
    headers = signing.sign(secret, key, "POST", signed_path(url), body)
    headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (scheme checked)
    try:
        with _OPENER.open(req, timeout=timeout) as answer:
            answer.read(MAX_ANSWER)
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return None
