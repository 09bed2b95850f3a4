"""One signed call to the client API (issue 18), as a client would make it: `make up` prints it.

    .venv/bin/python scripts/signed_call.py GET /compliance/api/v1/requests/r-1?client_id=1
    .venv/bin/python scripts/signed_call.py POST /compliance/api/v1/requests @request.json

The credential comes from COMPLIANCE_API_KEY / COMPLIANCE_API_SECRET (the local stack's `demo`
credential by default) and the server from COMPLIANCE_API_URL (http://127.0.0.1:8080). The
signature is `compliance.desk.signing.sign`: the same code the server verifies with, spelled
out for other languages in docs/api.md.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from compliance.desk.signing import sign
from compliance_dev.localenv import API_KEY, API_SECRET


def call(method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    base = os.environ.get("COMPLIANCE_API_URL", "http://127.0.0.1:8080").rstrip("/")
    key = os.environ.get("COMPLIANCE_API_KEY", API_KEY)
    secret = os.environ.get("COMPLIANCE_API_SECRET", API_SECRET).encode()
    headers = sign(secret, key, method, path, body)
    if body:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    method, path = argv[0].upper(), argv[1]
    body = b""
    if len(argv) == 3:
        body = Path(argv[2][1:]).read_bytes() if argv[2].startswith("@") else argv[2].encode()
    status, text = call(method, path, body)
    print(status)
    print(text)
    return 0 if status < 400 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
