"""`make up` / `make down`: Airflow standalone UI over the seeded world and a local S3.

`up` starts a moto S3 server and `airflow standalone` (each in its own process group), seeds a
small world on first start, pins the UI users' passwords and prints where to log in. `down` stops
both process groups, with SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from compliance.core.settings import REPO_ROOT
from compliance_dev.localenv import (
    API_KEY,
    API_SECRET,
    API_TENANTS,
    UI_PASSWORDS,
    UI_USERS,
    prepare_workspace,
    seed_command,
    start_group,
    start_s3,
    stop_group,
    ui_env,
    wait_http,
)

HOME = REPO_ROOT / ".demo" / "up"
PIDS = HOME / "pids.json"
PORT = int(os.environ.get("COMPLIANCE_UI_PORT", "8080"))


def up() -> int:
    if PIDS.exists():
        print("already up; run `make down` first", file=sys.stderr)
        return 1
    HOME.mkdir(parents=True, exist_ok=True)
    s3_proc, s3_url = start_s3(HOME)
    env = ui_env(HOME, s3_url, HOME / "crm.db", PORT)  # users and passwords pinned there
    crm = HOME / "crm.db"
    crm.unlink(missing_ok=True)  # the S3 server is new, so the world is seeded anew
    subprocess.check_call(seed_command(crm, s3_url), env=env)
    # The workspace bucket and SNS topics, as the demo and the browser test have them.
    prepare_workspace(s3_url, env["COMPLIANCE_WORKSPACE_BUCKET"], Path(env["COMPLIANCE_DATAMAP"]))
    af = start_group(["airflow", "standalone"], HOME / "logs" / "standalone.log", env)
    PIDS.write_text(json.dumps({"s3": s3_proc.pid, "airflow": af.pid, "s3_url": s3_url}))
    url = f"http://127.0.0.1:{PORT}"
    try:
        wait_http(f"{url}/api/v2/monitor/health", af, 180, HOME / "logs" / "standalone.log")
    except (RuntimeError, TimeoutError) as exc:
        print(f"Airflow did not come up: {exc}", file=sys.stderr)
        down()
        return 1
    print(f"Airflow UI: {url}")
    for user, role in UI_USERS.items():
        print(f"  user {user:<11} password {UI_PASSWORDS[user]:<11} role {role}")
    print(f"Compliance desk: {url}/compliance/dashboard  (the 'Compliance' navigation entry)")
    _print_signed_call(url)
    print(f"local S3: {s3_url}   logs: {HOME / 'logs'}   stop with: make down")
    return 0


def _print_signed_call(url: str) -> None:
    """A ready signed call of the client API (docs/api.md): Python, and curl with openssl."""
    path = "/compliance/api/v1/requests/demo-1?client_id=" + API_TENANTS[0]
    print(f"Client API: {url}/compliance/api/v1  (credential '{API_KEY}', tenants {API_TENANTS})")
    print("  Python: .venv/bin/python scripts/signed_call.py GET '" + path + "'")
    print("  curl:")
    print(
        f"    SECRET='{API_SECRET}' P='{path}' TS=$(date +%s) N=$(openssl rand -hex 16)\n"
        "    BODY_SHA=$(printf '' | sha256sum | cut -d' ' -f1)\n"
        '    SIG=$(printf \'v1\\nGET\\n%s\\n%s\\n%s\\n%s\' "$P" "$TS" "$N" "$BODY_SHA" '
        "| openssl dgst -sha256 -hmac \"$SECRET\" -r | cut -d' ' -f1)\n"
        f"    curl -s -H 'X-Compliance-Client: {API_KEY}' -H \"X-Compliance-Timestamp: $TS\" "
        f'-H "X-Compliance-Nonce: $N" -H "X-Compliance-Signature: v1=$SIG" "{url}$P"'
    )


def down() -> int:
    if not PIDS.exists():
        print("nothing to stop")
        return 0
    pids = json.loads(PIDS.read_text())
    for name in ("airflow", "s3"):
        stop_group(int(pids[name]), grace=15)
    PIDS.unlink()
    print("stopped Airflow and the local S3")
    return 0


if __name__ == "__main__":
    sys.exit({"up": up, "down": down}[sys.argv[1]]())
