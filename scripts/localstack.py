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
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from compliance.localenv import airflow_env, start_group, start_s3, stop_group
from compliance.settings import REPO_ROOT

HOME = REPO_ROOT / ".demo" / "up"
PIDS = HOME / "pids.json"
USERS = {"admin": "admin", "compliance": "op", "auditor": "viewer"}
PASSWORDS = {"admin": "admin", "compliance": "compliance", "auditor": "auditor"}
PORT = int(os.environ.get("COMPLIANCE_UI_PORT", "8080"))


def ui_env(s3_url: str) -> dict[str, str]:
    env = airflow_env(HOME, s3_url, HOME / "crm.db")
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = ",".join(f"{u}:{r}" for u, r in USERS.items())
    env["AIRFLOW__API__PORT"] = str(PORT)
    env["AIRFLOW__API__HOST"] = "127.0.0.1"
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{PORT}/execution/"
    return env


def up() -> int:
    if PIDS.exists():
        print("already up; run `make down` first", file=sys.stderr)
        return 1
    HOME.mkdir(parents=True, exist_ok=True)
    s3_proc, s3_url = start_s3(HOME)
    env = ui_env(s3_url)
    af_home = Path(env["AIRFLOW_HOME"])
    af_home.mkdir(parents=True, exist_ok=True)
    (af_home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps(PASSWORDS))
    crm = HOME / "crm.db"
    crm.unlink(missing_ok=True)  # the S3 server is new, so the world is seeded anew
    subprocess.check_call(
        [
            sys.executable,
            "-m",
            "compliance",
            "world",
            "seed",
            "--db",
            f"sqlite:///{crm}",
            "--s3",
            s3_url,
            "--scale",
            "small",
            "--as-of",
            datetime.now(UTC).date().isoformat(),
        ],
        env=env,
    )
    af = start_group(["airflow", "standalone"], HOME / "logs" / "standalone.log", env)
    PIDS.write_text(json.dumps({"s3": s3_proc.pid, "airflow": af.pid, "s3_url": s3_url}))
    url = f"http://127.0.0.1:{PORT}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2):
                break
        except OSError:
            if af.poll() is not None:
                print(f"airflow standalone exited; see {HOME / 'logs' / 'standalone.log'}")
                down()
                return 1
            time.sleep(1)
    else:
        print("Airflow did not become healthy within 180 s", file=sys.stderr)
        down()
        return 1
    print(f"Airflow UI: {url}")
    for user, role in USERS.items():
        print(f"  user {user:<11} password {PASSWORDS[user]:<11} role {role}")
    print(f"local S3: {s3_url}   logs: {HOME / 'logs'}   stop with: make down")
    return 0


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
